//! Celery's built-in tasks that any worker of an app has, so a Python app may
//! route them to a celeriac worker: `celery.accumulate` (a group replacement's
//! results, see `runtime/replace.rs`), `celery.backend_cleanup` (nothing to
//! clean with Redis, whose results expire by themselves), and `celery.map`,
//! `celery.starmap` and `celery.chunks` (a task of this worker called over a
//! list, in-process, as Python's), and `celery.chord_unlock` (the polling
//! join Celery uses for backends without a native one). A worker registers
//! them unless its registry has tasks of those names already.

use std::time::Duration;

use celeriac_protocol::result::{ExceptionInfo, ResultMeta, ResultTuple};
use celeriac_protocol::time::PyDateTime;
use celeriac_protocol::{Map, Signature, Value};

use crate::extract::RawArgs;
use crate::{Ctx, Registry, Task, TaskError};

/// The argument `name` at `position` (Celery's canvas sends them as keyword
/// arguments; a direct call may pass them by position).
fn argument<'a>(args: &'a [Value], kwargs: &'a Map, position: usize, name: &str) -> Result<&'a Value, TaskError> {
    kwargs
        .get(name)
        .or_else(|| args.get(position))
        .ok_or_else(|| TaskError::builtin("TypeError", format!("missing required argument: '{name}'")))
}

/// The task signature and the items of a map-like call.
fn map_arguments(args: &[Value], kwargs: &Map) -> Result<(Signature, Vec<Value>), TaskError> {
    let task = Signature::from_value(argument(args, kwargs, 0, "task")?)
        .map_err(|e| TaskError::builtin("TypeError", format!("task is not a signature: {e}")))?;
    let items = match argument(args, kwargs, 1, "it")? {
        Value::List(items) => items.clone(),
        other => {
            return Err(TaskError::builtin("TypeError", format!("'{}' object is not iterable", other.type_name())))
        }
    };
    Ok((task, items))
}

/// Lets other tasks run (and a time limit or revoke take effect) every 64
/// items of a long in-process loop.
async fn yield_sometimes(i: usize) {
    if i % 64 == 63 {
        tokio::task::yield_now().await;
    }
}

/// `celery.map(task, it)`: `[task(item) for item in it]`, each call in
/// this worker.
async fn map(ctx: Ctx, RawArgs(args, kwargs): RawArgs) -> Result<Value, TaskError> {
    let (task, items) = map_arguments(&args, &kwargs)?;
    let mut out = Vec::with_capacity(items.len().min(1024));
    for (i, item) in items.into_iter().enumerate() {
        out.push(ctx.call_local(&task.task, vec![item], Map::new()).await?);
        yield_sometimes(i).await;
    }
    Ok(Value::List(out))
}

/// `celery.starmap(task, it)`: `[task(*item) for item in it]`.
async fn starmap(ctx: Ctx, RawArgs(args, kwargs): RawArgs) -> Result<Value, TaskError> {
    let (task, items) = map_arguments(&args, &kwargs)?;
    let mut out = Vec::with_capacity(items.len().min(1024));
    for (i, item) in items.into_iter().enumerate() {
        yield_sometimes(i).await;
        let Value::List(item_args) = item else {
            let message = format!("argument after * must be an iterable, not {}", item.type_name());
            return Err(TaskError::builtin("TypeError", message));
        };
        out.push(ctx.call_local(&task.task, item_args, Map::new()).await?);
    }
    Ok(Value::List(out))
}

/// Most values the group `celery.chunks` sends may hold (parts times the
/// task signature's size).
const CHUNKS_MAX_VALUES: usize = 1_000_000;

/// How many values `value` holds, counting no further than `cap`.
fn value_count(value: &Value, cap: usize) -> usize {
    let mut count = 0usize;
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        count += 1;
        if count >= cap {
            return cap;
        }
        match v {
            Value::List(items) => stack.extend(items.iter()),
            Value::Map(map) => stack.extend(map.values()),
            _ => {}
        }
    }
    count
}

/// `celery.chunks(task, it, n)`: sends a group of `celery.starmap` tasks
/// over `it` in parts of `n`, and returns the group's result (stored as
/// Celery stores a `GroupResult`: its result tuple).
async fn chunks(ctx: Ctx, RawArgs(args, kwargs): RawArgs) -> Result<Value, TaskError> {
    let (task, items) = map_arguments(&args, &kwargs)?;
    let n = match argument(&args, &kwargs, 2, "n")? {
        Value::Int(n) if *n >= 1 => usize::try_from(*n).unwrap_or(usize::MAX),
        Value::Int(_) => {
            let message = "Stop argument for islice() must be None or an integer: 0 <= x <= sys.maxsize.";
            return Err(TaskError::builtin("ValueError", message));
        }
        other => {
            let message = format!("'{}' object cannot be interpreted as an integer", other.type_name());
            return Err(TaskError::builtin("TypeError", message));
        }
    };
    // Each part carries a copy of `task`: refuse what would multiply the
    // message far beyond its own size.
    let parts = items.len().div_ceil(n);
    let task_value = task.to_value();
    let copies = parts.saturating_mul(1 + value_count(&task_value, CHUNKS_MAX_VALUES));
    if copies > CHUNKS_MAX_VALUES {
        let message =
            format!("chunks: {parts} parts of this task would be {copies} values, more than {CHUNKS_MAX_VALUES}");
        return Err(TaskError::builtin("ValueError", message));
    }
    let members = items
        .chunks(n)
        .map(|part| {
            let mut sig = Signature::new("celery.starmap");
            sig.kwargs.insert("task".into(), task_value.clone());
            sig.kwargs.insert("it".into(), Value::List(part.to_vec()));
            sig.immutable = true;
            if let Some(queue) = task.options.get("queue") {
                sig.options.insert("queue".into(), queue.clone());
            }
            sig.to_value()
        })
        .collect();
    let mut group = Signature::new("celery.group");
    group.subtask_type = Some("group".into());
    group.kwargs.insert("tasks".into(), Value::List(members));
    let applied = ctx.apply(group).await?;
    Ok(applied.to_tuple().to_value())
}

/// `celery.accumulate(*args, index=None)`: the argument at `index`, or all
/// of them.
async fn accumulate(RawArgs(args, kwargs): RawArgs) -> Result<Value, TaskError> {
    match kwargs.get("index") {
        None | Some(Value::Null) => Ok(Value::List(args)),
        Some(Value::Int(i)) => {
            let at = if *i < 0 { i64::try_from(args.len()).unwrap_or(i64::MAX).saturating_add(*i) } else { *i };
            usize::try_from(at)
                .ok()
                .and_then(|at| args.get(at).cloned())
                .ok_or_else(|| TaskError::builtin("IndexError", "tuple index out of range"))
        }
        Some(other) => Err(TaskError::builtin(
            "TypeError",
            format!("tuple indices must be integers or slices, not {}", other.type_name()),
        )),
    }
}

/// `celery.chord_unlock(group_id, callback, interval=None, max_retries=None,
/// result=None)`: retried every `interval` seconds (1 by default) until
/// every result of the header is ready; then sends `callback` with their
/// values, or, when one failed, fails the callback with Celery's
/// `ChordError("Dependency <id> raised <exc>")` and sends its errbacks with
/// the callback's id.
async fn chord_unlock(ctx: Ctx, RawArgs(args, kwargs): RawArgs) -> Result<Value, TaskError> {
    let type_error = |what: &str| TaskError::builtin("TypeError", format!("chord_unlock: {what}"));
    let group_id =
        argument(&args, &kwargs, 0, "group_id")?.as_str().ok_or_else(|| type_error("group_id is not a str"))?;
    let callback = Signature::from_value(argument(&args, &kwargs, 1, "callback")?)
        .map_err(|e| type_error(&format!("callback is not a signature: {e}")))?;
    let interval = match kwargs.get("interval").or_else(|| args.get(2)) {
        None | Some(Value::Null) => 1.0,
        Some(Value::Int(i)) => *i as f64,
        Some(Value::Float(f)) => *f,
        Some(_) => return Err(type_error("interval is not a number")),
    };
    // A broker peer may send anything: a retry every 10 ms at least, an hour at most.
    let interval = Duration::from_secs_f64(if interval.is_finite() { interval.clamp(0.01, 3600.0) } else { 1.0 });
    let max_retries = match kwargs.get("max_retries").or_else(|| args.get(3)) {
        Some(Value::Int(n)) => Some(u32::try_from(*n).unwrap_or(if *n < 0 { 0 } else { u32::MAX })),
        _ => None,
    };
    let ids = match kwargs.get("result").or_else(|| args.get(4)) {
        Some(Value::List(tuples)) => tuples
            .iter()
            .map(|t| ResultTuple::from_value(t).map(|t| t.id))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| type_error(&format!("result is not a list of result tuples: {e}")))?,
        _ => return Err(type_error("result is not a list of result tuples")),
    };
    // An outage of the backend or the broker is waited out as Celery does:
    // the unlock is retried.
    let again = |what: &str, e: TaskError| {
        ctx.retry_in(format!("chord {group_id}: {what}: {e}"), interval).with_max_retries(max_retries)
    };
    let results = ctx.results(ids).await.map_err(|e| again("cannot read the header's results", e))?;
    if !results.iter().all(|r| r.status.is_ready()) {
        let waiting = results.iter().filter(|r| !r.status.is_ready()).count();
        let reason = format!("chord {group_id}: {waiting} of {} results not ready", results.len());
        return Err(ctx.retry_in(reason, interval).with_max_retries(max_retries));
    }
    if let Some(culprit) = results.iter().find(|r| r.status.propagates()) {
        let exc = culprit.exception().ok().flatten().map_or_else(|| culprit.status.to_string(), |e| e.python_repr());
        let reason = format!("Dependency {} raised {exc}", culprit.task_id);
        tracing::error!("Chord {group_id:?} raised: ChordError({reason:?})");
        let error = ExceptionInfo::new("celery.exceptions", "ChordError", vec![Value::Str(reason)]);
        let Some(body_id) = callback.options.get("task_id").and_then(Value::as_str) else { return Ok(Value::Null) };
        // As Celery's chord_error_from_stack: the errbacks, then the failure.
        let errbacks = crate::runtime::signatures_in(callback.options.get("link_error"));
        let mut children = Vec::new();
        if !errbacks.is_empty() {
            let mut group = Signature::new("celery.group");
            group.subtask_type = Some("group".into());
            let members = errbacks
                .into_iter()
                .map(|mut errback| {
                    if !errback.immutable {
                        errback.args.insert(0, Value::Str(body_id.to_owned()));
                    }
                    errback.to_value()
                })
                .collect();
            group.kwargs.insert("tasks".into(), Value::List(members));
            children
                .push(ctx.apply(group).await.map_err(|e| again("cannot send the errbacks", e))?.to_tuple().to_value());
        }
        // With the children of the task running the join, as Celery stores it.
        let mut meta = ResultMeta::failure(body_id, &error, None, PyDateTime::now_utc());
        meta.children = children;
        ctx.store(meta).await.map_err(|e| again("cannot store the chord error", e))?;
        return Ok(Value::Null);
    }
    let mut body = callback;
    if !body.immutable {
        let values = results.into_iter().map(|r| r.result).collect();
        body.args.insert(0, Value::List(values));
    }
    ctx.apply(body).await.map_err(|e| again("cannot send the callback", e))?;
    Ok(Value::Null)
}

/// `celery.backend_cleanup()`: results in Redis expire on their own.
async fn backend_cleanup() -> Result<(), TaskError> {
    Ok(())
}

/// Adds the built-ins `registry` lacks.
pub(crate) fn add_missing(registry: &mut Registry) {
    if registry.get("celery.accumulate").is_none() {
        registry.add(Task::new("celery.accumulate", accumulate));
    }
    if registry.get("celery.backend_cleanup").is_none() {
        registry.add(Task::new("celery.backend_cleanup", backend_cleanup).ignore_result(true));
    }
    if registry.get("celery.chord_unlock").is_none() {
        registry.add(Task::new("celery.chord_unlock", chord_unlock).retry_forever().ignore_result(true));
    }
    if registry.get("celery.map").is_none() {
        registry.add(Task::new("celery.map", map));
    }
    if registry.get("celery.starmap").is_none() {
        registry.add(Task::new("celery.starmap", starmap));
    }
    if registry.get("celery.chunks").is_none() {
        registry.add(Task::new("celery.chunks", chunks));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use celeriac_protocol::Map;

    #[tokio::test]
    async fn accumulate_returns_the_indexed_argument_or_all() {
        let args = vec![Value::Int(1), Value::Int(2)];
        let mut index = Map::new();
        index.insert("index".into(), Value::Int(0));
        assert_eq!(accumulate(RawArgs(args.clone(), index.clone())).await.unwrap(), Value::Int(1));
        index.insert("index".into(), Value::Int(-1));
        assert_eq!(accumulate(RawArgs(args.clone(), index.clone())).await.unwrap(), Value::Int(2));
        assert_eq!(accumulate(RawArgs(args.clone(), Map::new())).await.unwrap(), Value::List(args.clone()));
        index.insert("index".into(), Value::Int(5));
        assert!(accumulate(RawArgs(args, index)).await.is_err());
    }

    struct Local(Registry);

    impl crate::WorkerServices for Local {
        fn update_state(
            &self,
            _: &str,
            _: &str,
            _: Value,
        ) -> futures_util::future::BoxFuture<'static, Result<(), TaskError>> {
            Box::pin(async { Ok(()) })
        }
        fn is_revoked(&self, _: &str) -> bool {
            false
        }
        fn task(&self, name: &str) -> Option<Task> {
            self.0.get(name).cloned()
        }
    }

    async fn add(crate::Args((a, b)): crate::Args<(i64, i64)>) -> Result<i64, TaskError> {
        Ok(a + b)
    }

    async fn double(crate::Args((a,)): crate::Args<(i64,)>) -> Result<i64, TaskError> {
        Ok(a * 2)
    }

    fn ctx() -> Ctx {
        let registry = Registry::new().with(Task::new("t.add", add)).with(Task::new("t.double", double));
        let request = crate::context::RequestInfo::default();
        Ctx::new(
            request,
            std::sync::Arc::new(Local(registry)),
            tokio_util::sync::CancellationToken::new(),
            tokio_util::sync::CancellationToken::new(),
        )
    }

    fn call(task: &str, it: Value) -> RawArgs {
        let mut kwargs = Map::new();
        kwargs.insert("task".into(), Signature::new(task).to_value());
        kwargs.insert("it".into(), it);
        RawArgs(Vec::new(), kwargs)
    }

    #[tokio::test]
    async fn map_and_starmap_call_the_task_here_for_each_item() {
        let items = Value::List(vec![Value::Int(1), Value::Int(2)]);
        assert_eq!(map(ctx(), call("t.double", items)).await.unwrap(), Value::List(vec![Value::Int(2), Value::Int(4)]));
        let pairs = Value::List(vec![
            Value::List(vec![Value::Int(1), Value::Int(1)]),
            Value::List(vec![Value::Int(2), Value::Int(2)]),
        ]);
        assert_eq!(
            starmap(ctx(), call("t.add", pairs)).await.unwrap(),
            Value::List(vec![Value::Int(2), Value::Int(4)])
        );
    }

    #[tokio::test]
    async fn map_refuses_what_python_refuses() {
        let kind = |e: TaskError| e.kind().map(str::to_owned);
        let unknown = map(ctx(), call("t.nope", Value::List(vec![Value::Int(1)]))).await.unwrap_err();
        assert_eq!(kind(unknown).as_deref(), Some("NotRegistered"));
        let not_a_list = map(ctx(), call("t.double", Value::Int(3))).await.unwrap_err();
        assert_eq!(kind(not_a_list).as_deref(), Some("TypeError"));
        let flat = starmap(ctx(), call("t.add", Value::List(vec![Value::Int(1)]))).await.unwrap_err();
        assert_eq!(kind(flat).as_deref(), Some("TypeError"));
        let mut zero = call("t.add", Value::List(vec![]));
        zero.1.insert("n".into(), Value::Int(0));
        assert_eq!(kind(chunks(ctx(), zero).await.unwrap_err()).as_deref(), Some("ValueError"));
        let mut huge = call("t.add", Value::List(vec![]));
        huge.1.insert("n".into(), Value::Float(1e300));
        assert_eq!(kind(chunks(ctx(), huge).await.unwrap_err()).as_deref(), Some("TypeError"));
    }

    #[tokio::test]
    async fn chunks_refuses_to_multiply_a_large_task_and_local_calls_are_bounded_in_depth() {
        let mut big = call("t.add", Value::List((0..600_000).map(Value::Int).collect()));
        big.1.insert("n".into(), Value::Int(1));
        let kind = |e: TaskError| e.kind().map(str::to_owned);
        assert_eq!(kind(chunks(ctx(), big).await.unwrap_err()).as_deref(), Some("ValueError"));

        // starmap of starmap of ... : Python's RecursionError, not a stack overflow.
        let registry = Registry::new().with(Task::new("celery.starmap", starmap));
        let deep = Ctx::new(
            crate::context::RequestInfo::default(),
            std::sync::Arc::new(Local(registry)),
            tokio_util::sync::CancellationToken::new(),
            tokio_util::sync::CancellationToken::new(),
        );
        let mut inner = Value::List(vec![]);
        for _ in 0..40 {
            inner = Value::List(vec![Value::List(vec![Signature::new("celery.starmap").to_value(), inner])]);
        }
        let err = starmap(deep, call("celery.starmap", inner)).await.unwrap_err();
        assert_eq!(kind(err).as_deref(), Some("RecursionError"));
    }

    #[tokio::test]
    async fn chord_unlock_takes_any_interval_and_retries_when_results_cannot_be_read() {
        for (interval, want) in [
            (Value::Float(f64::NAN), 1.0),
            (Value::Float(f64::INFINITY), 1.0),
            (Value::Float(1e300), 3600.0),
            (Value::Int(-5), 0.01),
            (Value::Null, 1.0),
        ] {
            let mut kwargs = Map::new();
            kwargs.insert("group_id".into(), Value::Str("g".into()));
            kwargs.insert("callback".into(), Signature::new("t.add").to_value());
            kwargs.insert("interval".into(), interval.clone());
            kwargs.insert("max_retries".into(), Value::Int(-1));
            kwargs.insert("result".into(), Value::List(vec![]));
            // The test services cannot read results: an outage, retried.
            match chord_unlock(ctx(), RawArgs(Vec::new(), kwargs)).await.unwrap_err() {
                TaskError::Retry { countdown, max_retries, .. } => {
                    assert_eq!(countdown, Some(Duration::from_secs_f64(want)), "{interval:?}");
                    assert_eq!(max_retries, Some(0));
                }
                other => panic!("{interval:?}: {other:?}"),
            }
        }
        let mut wrong = Map::new();
        wrong.insert("group_id".into(), Value::Int(1));
        let err = chord_unlock(ctx(), RawArgs(Vec::new(), wrong)).await.unwrap_err();
        assert_eq!(err.kind(), Some("TypeError"));
    }
}
