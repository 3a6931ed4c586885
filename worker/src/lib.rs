//! The celeriac worker runtime.
//!
//! A task is a plain function whose parameters are extractors, registered by
//! name with Celery's options:
//!
//! ```
//! use celeriac_worker::{Args, Ctx, Registry, Task, TaskError};
//!
//! async fn add(Args((a, b)): Args<(i64, i64)>) -> Result<i64, TaskError> {
//!     Ok(a + b)
//! }
//!
//! async fn stage(ctx: Ctx, Args((path,)): Args<(String,)>) -> Result<String, TaskError> {
//!     if path.is_empty() {
//!         return Err(ctx.retry("no path yet"));
//!     }
//!     Ok(format!("staged {path}"))
//! }
//!
//! let registry = Registry::new()
//!     .with(Task::new("tasks.add", add))
//!     .with(Task::new("workflow.stage", stage).acks_late(true).max_retries(Some(10)));
//! assert_eq!(registry.len(), 2);
//! ```
//!
//! Modules: [`error`] (how a task fails, retries, rejects), [`extract`]
//! (`Args`, `Kwargs`, `Ctx`), [`handler`] (functions as tasks), [`task`]
//! (options), [`registry`], [`context`].

// The control loop and the runtime are deep futures (the Redis settler and
// the canvas applier are in their types).
#![recursion_limit = "256"]

mod builtins;
pub mod context;
pub mod control;
pub mod error;
pub mod events;
pub mod extract;
pub mod handler;
pub mod metrics;
pub mod rate;
pub mod registry;
pub mod runtime;
pub mod state;
pub mod store;
pub mod task;

pub use celeriac_client::{AsyncResult, Client, ResultError};
pub use context::{Ctx, RequestInfo, WorkerServices};
pub use error::TaskError;
pub use extract::{Args, FromInvocation, Invocation, Kwargs, RawArgs};
pub use registry::Registry;
pub use runtime::{Worker, WorkerConfig};
pub use store::{ChordPartReturn, ResultStore, StoreError};
pub use task::{Param, Task, TaskOptions};

#[cfg(test)]
mod tests {
    use super::*;
    use celeriac_protocol::{Map, Value};
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct Copy {
        src: String,
        #[serde(default)]
        verify: bool,
    }

    async fn add(Args((a, b)): Args<(i64, i64)>) -> Result<i64, TaskError> {
        Ok(a + b)
    }

    async fn copy(ctx: Ctx, Kwargs(c): Kwargs<Copy>) -> Result<String, TaskError> {
        Ok(format!("{} {} {}", ctx.id(), c.src, c.verify))
    }

    fn checksum(Args(data): Args<Vec<u8>>) -> Result<u32, TaskError> {
        Ok(data.iter().map(|&b| u32::from(b)).sum())
    }

    async fn nothing() -> Result<(), TaskError> {
        Ok(())
    }

    fn invocation(args: Vec<Value>, kwargs: Map) -> Invocation {
        let mut request = RequestInfo::default();
        request.headers.id = "t-1".into();
        request.headers.task = "x".into();
        request.args = args;
        request.kwargs = kwargs;
        Invocation::new(Ctx::detached(request))
    }

    #[tokio::test]
    async fn extractors_feed_plain_functions() {
        let reg = Registry::new()
            .with(Task::new("tasks.add", add))
            .with(Task::new("tasks.copy", copy))
            .with(Task::blocking("tasks.checksum", checksum))
            .with(Task::new("tasks.nothing", nothing));
        let run = |name: &str, inv| reg.get(name).unwrap().handler().call(inv);

        let out = run("tasks.add", invocation(vec![Value::Int(2), Value::Int(3)], Map::new())).await;
        assert_eq!(out, Ok(Value::Int(5)));

        let mut kw = Map::new();
        kw.insert("src".into(), "/data".into());
        let out = run("tasks.copy", invocation(vec![], kw)).await;
        assert_eq!(out, Ok(Value::Str("t-1 /data false".into())));

        let out = run("tasks.checksum", invocation(vec![Value::Int(1), Value::Int(2)], Map::new())).await;
        assert_eq!(out, Ok(Value::Int(3)));

        assert_eq!(run("tasks.nothing", invocation(vec![], Map::new())).await, Ok(Value::Null));
    }

    #[tokio::test]
    async fn wrong_arguments_fail_with_type_error() {
        let task = Task::new("tasks.add", add);
        let out = task.handler().call(invocation(vec![Value::Int(2)], Map::new())).await;
        match out {
            Err(TaskError::Failure { exc_type, exc_module, message, .. }) => {
                assert_eq!((exc_type.as_str(), exc_module.as_str()), ("TypeError", "builtins"));
                assert!(message.contains("positional"), "{message}");
            }
            other => panic!("expected a TypeError, got {other:?}"),
        }
    }

    #[test]
    fn options_default_to_celerys() {
        let t = Task::new("tasks.add", add);
        assert_eq!(t.options().max_retries, Some(3));
        assert_eq!(t.options().default_retry_delay, std::time::Duration::from_secs(180));
        assert!(t.options().acks_late.is_none());
        let t = t.acks_late(true).rate_limit("10/s").autoretry_for(["IOError"], None);
        assert_eq!(t.options().acks_late, Some(true));
        assert_eq!(t.options().autoretry_for, vec!["IOError".to_string()]);
    }

    #[test]
    fn raised_exceptions_keep_all_their_arguments() {
        let exc = celeriac_protocol::result::ExceptionInfo::new(
            "t.integration.tasks",
            "ExpectedException",
            vec!["Task expected to fail".into(), "disk full".into()],
        );
        let e = TaskError::raise(exc.clone());
        assert_eq!(e.exception(), exc);
        assert_eq!(e.to_string(), r#"ExpectedException("('Task expected to fail', 'disk full')")"#);
    }

    #[test]
    fn failures_are_stored_as_python_exceptions() {
        let e = TaskError::builtin("ValueError", "bad value 7");
        assert_eq!(
            celeriac_protocol::json::to_string(&e.exception_value()).unwrap(),
            r#"{"exc_type": "ValueError", "exc_message": ["bad value 7"], "exc_module": "builtins"}"#
        );
    }
}
