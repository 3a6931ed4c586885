//! How a task ends other than by returning a value, as Celery knows the cases.

use std::time::Duration;

use celeriac_protocol::result::ExceptionInfo;
use celeriac_protocol::time::PyDateTime;
use celeriac_protocol::{Map, Value};

/// What a task returns instead of a value: a failure Python will see as an
/// exception, a retry, a rejection, or "ignore this message".
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TaskError {
    /// The task failed. Python clients see an exception of `exc_type` from
    /// `exc_module` with `message` as its argument.
    #[error("{exc_type}({message:?})")]
    Failure {
        /// Exception class name (`ValueError`, `TransferError`).
        exc_type: String,
        /// Module Python imports the class from (`builtins`, or the module of
        /// a custom exception the Python side defines).
        exc_module: String,
        /// The exception's message (`str(exc)`).
        message: String,
        /// The exception's arguments when they are not just `(message,)`
        /// (`ExpectedException("Task expected to fail", "disk full")`).
        args: Option<Box<Vec<Value>>>,
        /// A traceback-like text for the result's `traceback` field.
        traceback: Option<String>,
        /// Whether `autoretry_for` may retry this failure (by its `exc_type`).
        kind: Option<Box<str>>,
    },
    /// Retry the task later (Celery's `self.retry`).
    #[error("Retry in {}: {reason}", retry_when(.countdown, .eta))]
    Retry {
        /// Why, as shown in logs and stored in the RETRY state.
        reason: String,
        /// The exception type to store with the RETRY state (default `Retry`).
        exc_type: Option<String>,
        /// Delay before the retry (default: the task's `default_retry_delay`).
        countdown: Option<Duration>,
        /// Exact time of the retry; wins over `countdown`.
        eta: Option<PyDateTime>,
        /// Overrides the task's `max_retries` for this retry.
        max_retries: Option<u32>,
        /// The exception being retried (`self.retry(exc=...)`): stored with the
        /// RETRY state, and raised instead of `MaxRetriesExceededError` once
        /// retries are used up.
        exc: Option<Box<ExceptionInfo>>,
        /// New arguments for the retry (`self.retry(args=..., kwargs=...)`);
        /// `None` keeps the request's.
        arguments: Option<Box<RetryArguments>>,
    },
    /// Reject the message (Celery's `Reject`): requeue it, or drop it.
    #[error("Rejected (requeue={requeue}): {reason}")]
    Reject {
        /// Why.
        reason: String,
        /// Put it back on the queue instead of dropping it.
        requeue: bool,
    },
    /// Do nothing more with this message: no result, no ack bookkeeping beyond
    /// the ack (Celery's `Ignore`).
    #[error("Ignored")]
    Ignore,
}

/// The arguments a retry is sent with, where they differ from the request's.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RetryArguments {
    /// Positional arguments (`None`: the request's).
    pub args: Option<Vec<Value>>,
    /// Keyword arguments (`None`: the request's).
    pub kwargs: Option<Map>,
}

fn retry_when(countdown: &Option<Duration>, eta: &Option<PyDateTime>) -> String {
    match (eta, countdown) {
        (Some(eta), _) => eta.to_iso(),
        (None, Some(d)) => format!("{}s", d.as_secs_f64()),
        (None, None) => "the default delay".into(),
    }
}

impl TaskError {
    /// A failure reported to Python as `builtins.<exc_type>` (e.g. `ValueError`,
    /// `RuntimeError`, `KeyError`), so Python re-raises a real built-in exception.
    pub fn builtin(exc_type: &str, message: impl Into<String>) -> TaskError {
        TaskError::custom("builtins", exc_type, message)
    }

    /// A failure of a custom exception class `exc_module.exc_type`.
    pub fn custom(exc_module: &str, exc_type: &str, message: impl Into<String>) -> TaskError {
        TaskError::Failure {
            exc_type: exc_type.into(),
            exc_module: exc_module.into(),
            message: message.into(),
            args: None,
            traceback: None,
            kind: None,
        }
    }

    /// A failure raising exactly `exc` (its module, type and arguments), as a
    /// Python task raising that exception stores it.
    pub fn raise(exc: ExceptionInfo) -> TaskError {
        let message = exc.python_str();
        TaskError::Failure {
            exc_module: exc.exc_module.unwrap_or_else(|| "builtins".into()),
            exc_type: exc.exc_type,
            message,
            args: Some(Box::new(exc.exc_message)),
            traceback: None,
            kind: None,
        }
    }

    /// A plain failure: Python sees `RuntimeError(message)`.
    pub fn fail(message: impl Into<String>) -> TaskError {
        TaskError::builtin("RuntimeError", message)
    }

    /// A retry after the task's default delay.
    pub fn retry(reason: impl Into<String>) -> TaskError {
        TaskError::Retry {
            reason: reason.into(),
            exc_type: None,
            countdown: None,
            eta: None,
            max_retries: None,
            exc: None,
            arguments: None,
        }
    }

    /// A retry after `countdown`.
    pub fn retry_in(reason: impl Into<String>, countdown: Duration) -> TaskError {
        TaskError::Retry {
            reason: reason.into(),
            exc_type: None,
            countdown: Some(countdown),
            eta: None,
            max_retries: None,
            exc: None,
            arguments: None,
        }
    }

    /// A retry of `exc` (Celery's `self.retry(exc=exc, countdown=...)`): the
    /// RETRY state stores `exc`, and once retries are used up the task fails
    /// with `exc` itself.
    pub fn retry_exc(exc: ExceptionInfo, countdown: Option<Duration>) -> TaskError {
        TaskError::Retry {
            reason: exc.python_repr(),
            exc_type: None,
            countdown,
            eta: None,
            max_retries: None,
            exc: Some(Box::new(exc)),
            arguments: None,
        }
    }

    /// Retries with these arguments instead of the request's (each `None`
    /// keeps the request's), as `self.retry(args=..., kwargs=...)`.
    pub fn with_arguments(mut self, args: Option<Vec<Value>>, kwargs: Option<Map>) -> TaskError {
        if let TaskError::Retry { arguments, .. } = &mut self {
            *arguments = Some(Box::new(RetryArguments { args, kwargs }));
        }
        self
    }

    /// Sets the `max_retries` of a retry for this call only.
    pub fn with_max_retries(mut self, max: Option<u32>) -> TaskError {
        if let TaskError::Retry { max_retries, .. } = &mut self {
            *max_retries = max;
        }
        self
    }

    /// Reject the message; `requeue` puts it back for another worker.
    pub fn reject(reason: impl Into<String>, requeue: bool) -> TaskError {
        TaskError::Reject { reason: reason.into(), requeue }
    }

    /// Marks a failure with the error kind `autoretry_for` matches on.
    pub fn with_kind(mut self, k: impl Into<String>) -> TaskError {
        if let TaskError::Failure { kind, .. } = &mut self {
            *kind = Some(k.into().into_boxed_str());
        }
        self
    }

    /// Attaches a traceback text to a failure.
    pub fn with_traceback(mut self, text: impl Into<String>) -> TaskError {
        if let TaskError::Failure { traceback, .. } = &mut self {
            *traceback = Some(text.into());
        }
        self
    }

    /// The kind `autoretry_for` compares against: the explicit kind, else the
    /// exception type name.
    pub fn kind(&self) -> Option<&str> {
        match self {
            TaskError::Failure { kind: Some(k), .. } => Some(k),
            TaskError::Failure { exc_type, .. } => Some(exc_type),
            _ => None,
        }
    }

    /// The exception Python sees for this outcome.
    pub fn exception(&self) -> ExceptionInfo {
        match self {
            TaskError::Failure { exc_type, exc_module, message, args, .. } => {
                let args = args.as_deref().cloned().unwrap_or_else(|| vec![Value::Str(message.clone())]);
                ExceptionInfo::new(exc_module, exc_type, args)
            }
            TaskError::Retry { exc: Some(exc), .. } => (**exc).clone(),
            TaskError::Retry { reason, exc_type, .. } => retry_exception(exc_type.as_deref(), reason),
            TaskError::Reject { reason, .. } => {
                ExceptionInfo::new("celery.exceptions", "Reject", vec![Value::Str(reason.clone())])
            }
            TaskError::Ignore => ExceptionInfo::new("celery.exceptions", "Ignore", vec![Value::Str(String::new())]),
        }
    }

    /// The exception as Celery stores it: `{exc_type, exc_message, exc_module}`.
    pub fn exception_value(&self) -> Value {
        self.exception().to_value()
    }
}

/// The exception stored with a RETRY state: the named type (a built-in), or
/// Celery's own `Retry`.
pub(crate) fn retry_exception(exc_type: Option<&str>, reason: &str) -> ExceptionInfo {
    match exc_type {
        Some(t) => ExceptionInfo::new("builtins", t, vec![Value::Str(reason.to_owned())]),
        None => ExceptionInfo::new("celery.exceptions", "Retry", vec![Value::Str(reason.to_owned())]),
    }
}

/// Lets `?` turn argument decoding errors into a task failure Python sees as
/// `TypeError`, as it would for wrong arguments.
impl From<ExceptionInfo> for TaskError {
    fn from(exc: ExceptionInfo) -> TaskError {
        TaskError::raise(exc)
    }
}

impl From<celeriac_protocol::ValueError> for TaskError {
    fn from(e: celeriac_protocol::ValueError) -> TaskError {
        TaskError::builtin("TypeError", e.0)
    }
}
