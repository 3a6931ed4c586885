//! Raising Python exceptions from a task, and Celery's `self.retry(exc=...)`.
//!
//! A Python task raises an exception object: a class in a module, with
//! arguments. [`raise`] turns one ([`ExceptionInfo`]) into the worker's
//! [`TaskError`], so a Python client re-raises the same class; [`retry`] does
//! what `raise self.retry(exc=exc, countdown=..., max_retries=...)` does: a
//! retry while retries remain, and the exception itself (not
//! `MaxRetriesExceededError`) once they are used up.
//!
//! A failure keeps every argument of the exception (`ExpectedException('Task
//! expected to fail', 'test')` is stored with both). A retry cannot carry its
//! exception yet (see the crate README): the RETRY state stores Celery's
//! `Retry` with `repr(exc)` as its message.

use std::time::Duration;

use celeriac_protocol::ExceptionInfo;
use celeriac_worker::{Ctx, TaskError};

/// An exception of class `exc_type` from module `module` with `args`.
pub fn exception(module: &str, exc_type: &str, args: Vec<celeriac_protocol::Value>) -> ExceptionInfo {
    ExceptionInfo::new(module, exc_type, args)
}

/// The failure a task returns to raise `exc`: its class, module and every argument.
pub fn raise(exc: &ExceptionInfo) -> TaskError {
    TaskError::raise(exc.clone())
}

/// The options of a `self.retry(...)` call.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Retry {
    /// `countdown`; `None` uses the task's `default_retry_delay`.
    pub countdown: Option<Duration>,
    /// The limit in force: the call's `max_retries`, else the task's. `None`
    /// retries for ever.
    pub max_retries: Option<u32>,
    /// `exc`: stored with the RETRY state, and raised once the retries are used up.
    pub exc: Option<ExceptionInfo>,
}

impl Retry {
    /// A retry after `countdown` with `max_retries` in force.
    pub fn new(countdown: Option<Duration>, max_retries: Option<u32>) -> Retry {
        Retry { countdown, max_retries, exc: None }
    }

    /// The same carrying `exc`.
    pub fn with_exc(mut self, exc: ExceptionInfo) -> Retry {
        self.exc = Some(exc);
        self
    }
}

/// What `raise self.retry(...)` does for the running request: past the limit
/// with an `exc`, that exception; otherwise a retry (past the limit without
/// one, the worker fails the task with `MaxRetriesExceededError`).
pub fn retry(ctx: &Ctx, options: Retry) -> TaskError {
    let exhausted = options.max_retries.is_some_and(|max| ctx.retries() >= i64::from(max));
    match (exhausted, options.exc) {
        (true, Some(exc)) => raise(&exc),
        (_, Some(exc)) => TaskError::retry_exc(exc, options.countdown).with_max_retries(options.max_retries),
        (_, None) => TaskError::Retry {
            reason: "Task can be retried".to_owned(),
            exc_type: None,
            countdown: options.countdown,
            eta: None,
            max_retries: options.max_retries,
            exc: None,
            arguments: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use celeriac_protocol::Value;
    use celeriac_worker::RequestInfo;

    fn ctx(retries: i64) -> Ctx {
        let mut request = RequestInfo::default();
        request.headers.retries = retries;
        Ctx::detached(request)
    }

    #[test]
    fn raising_keeps_class_module_and_arguments() {
        let expected = vec![Value::Str("Task expected to fail".into())];
        for (exc, text) in [
            (exception("t.integration.tasks", "ExpectedException", expected), "Task expected to fail"),
            (exception("m", "E", vec![Value::Str("a".into()), Value::Int(1)]), "('a', 1)"),
            (exception("builtins", "ValueError", vec![]), ""),
        ] {
            let err = raise(&exc);
            assert_eq!(err.exception(), exc);
            assert!(matches!(&err, TaskError::Failure { message, .. } if message == text), "{err:?}");
        }
    }

    #[test]
    fn retry_raises_exc_once_retries_are_used_up() {
        let exc = exception("m", "Boom", vec![Value::Str("x".into())]);
        let opts = Retry::new(Some(Duration::from_secs(5)), Some(3)).with_exc(exc);
        match retry(&ctx(2), opts.clone()) {
            TaskError::Retry { reason, countdown, max_retries, .. } => {
                assert_eq!(
                    (reason.as_str(), countdown, max_retries),
                    ("Boom('x')", Some(Duration::from_secs(5)), Some(3))
                );
            }
            other => panic!("expected a retry, got {other:?}"),
        }
        assert_eq!(retry(&ctx(3), opts).exception(), exception("m", "Boom", vec![Value::Str("x".into())]));
        // Without exc the worker decides (MaxRetriesExceededError).
        assert!(matches!(retry(&ctx(3), Retry::new(None, Some(3))), TaskError::Retry { countdown: None, .. }));
        assert!(matches!(
            retry(&ctx(99), Retry::new(None, None).with_exc(exception("m", "E", vec![]))),
            TaskError::Retry { .. }
        ));
    }
}
