//! How a task ends other than by returning a value, as Celery knows the cases.
//!
//! # `?` in a task
//!
//! A task returns `Result<T, TaskError>`, so `?` works on every error that
//! converts into a [`TaskError`]. Each becomes the exception a Python task
//! would have raised, which is what a Python client's `AsyncResult.get()`
//! re-raises:
//!
//! | error | Python sees |
//! |---|---|
//! | [`std::io::Error`] with an OS error | the `OSError` subclass Python picks for the errno (`FileNotFoundError(2, 'No such file or directory')`, `PermissionError(13, ...)`, `ConnectionRefusedError(111, ...)`, else `OSError(errno, strerror)`), so `.errno` is set |
//! | [`std::io::Error`] without one | the subclass for its kind (`NotFound`: `FileNotFoundError`, `TimedOut`: `TimeoutError`, ...), else `OSError`, with the message |
//! | `serde_json::Error` | `ValueError` (what `json.loads` raises), `OSError` for its I/O errors |
//! | [`celeriac_protocol::ValueError`] (`from_value`/`to_value`) | `TypeError` |
//! | [`std::num::ParseIntError`], [`std::num::ParseFloatError`], [`std::str::Utf8Error`], [`std::string::FromUtf8Error`] | `ValueError` (what `int("x")`, `float("x")`, `b.decode()` raise) |
//! | [`tokio::time::error::Elapsed`] (`tokio::time::timeout`) | `TimeoutError` |
//! | `Box<dyn Error + Send + Sync>` | `RuntimeError` with the message and its sources |
//! | [`celeriac_client::CanvasError`] (`sig.to_wire()?`) | `ValueError` for an invalid signature, kombu's `OperationalError` when the broker refuses it |
//! | [`ExceptionInfo`] | exactly that exception |
//!
//! Any other error: either map it at the call with
//! [`TaskError::from_display`] (`.map_err(TaskError::from_display("ValueError"))?`)
//! or [`TaskError::from_error`] (the message with its `source()` chain), or
//! implement `From<YourError> for TaskError` once, choosing the Python
//! exception for each case:
//!
//! ```
//! use celeriac_worker::TaskError;
//!
//! #[derive(Debug, thiserror::Error)]
//! enum StageError {
//!     #[error("run {0} is not in the catalog")]
//!     UnknownRun(u64),
//!     #[error("the tape library is busy")]
//!     Busy,
//! }
//!
//! impl From<StageError> for TaskError {
//!     fn from(e: StageError) -> TaskError {
//!         match e {
//!             StageError::UnknownRun(_) => TaskError::builtin("KeyError", e.to_string()),
//!             // A custom exception class a Python module of yours defines.
//!             StageError::Busy => TaskError::custom("science.errors", "TapeBusy", e.to_string()),
//!         }
//!     }
//! }
//!
//! fn stage(run: u64) -> Result<String, TaskError> {
//!     let depth: u32 = "3".parse()?; // ParseIntError: ValueError
//!     if run == 0 {
//!         return Err(StageError::UnknownRun(run).into());
//!     }
//!     Ok(format!("run {run} at depth {depth}"))
//! }
//! # assert!(stage(0).is_err());
//! ```

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

/// The Python class `OSError(errno, ...)` becomes for `errno` (Python's
/// `OSError.__new__` picks a subclass from the errno), with Linux's numbers.
#[cfg(target_os = "linux")]
fn errno_class(errno: i32) -> &'static str {
    match errno {
        11 | 114 | 115 => "BlockingIOError", // EAGAIN/EWOULDBLOCK, EALREADY, EINPROGRESS
        10 => "ChildProcessError",           // ECHILD
        32 | 108 => "BrokenPipeError",       // EPIPE, ESHUTDOWN
        103 => "ConnectionAbortedError",     // ECONNABORTED
        111 => "ConnectionRefusedError",     // ECONNREFUSED
        104 => "ConnectionResetError",       // ECONNRESET
        17 => "FileExistsError",             // EEXIST
        2 => "FileNotFoundError",            // ENOENT
        21 => "IsADirectoryError",           // EISDIR
        20 => "NotADirectoryError",          // ENOTDIR
        4 => "InterruptedError",             // EINTR
        1 | 13 => "PermissionError",         // EPERM, EACCES
        3 => "ProcessLookupError",           // ESRCH
        110 => "TimeoutError",               // ETIMEDOUT
        _ => "OSError",
    }
}

/// Elsewhere, the class for the kind the OS error decodes to.
#[cfg(not(target_os = "linux"))]
fn errno_class(errno: i32) -> &'static str {
    kind_class(std::io::Error::from_raw_os_error(errno).kind())
}

/// The `OSError` subclass Python raises for what an error of `kind` means.
fn kind_class(kind: std::io::ErrorKind) -> &'static str {
    use std::io::ErrorKind as K;
    match kind {
        K::NotFound => "FileNotFoundError",
        K::PermissionDenied => "PermissionError",
        K::ConnectionRefused => "ConnectionRefusedError",
        K::ConnectionReset => "ConnectionResetError",
        K::ConnectionAborted => "ConnectionAbortedError",
        K::AlreadyExists => "FileExistsError",
        K::WouldBlock => "BlockingIOError",
        K::BrokenPipe => "BrokenPipeError",
        K::TimedOut => "TimeoutError",
        K::Interrupted => "InterruptedError",
        K::IsADirectory => "IsADirectoryError",
        K::NotADirectory => "NotADirectoryError",
        _ => "OSError",
    }
}

/// The message of `e` followed by its `source()` chain: `a: b: c`.
fn with_sources(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut at = e.source();
    let mut depth = 0;
    while let Some(source) = at {
        let part = source.to_string();
        // Errors that print their source themselves are not repeated.
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        at = source.source();
        depth += 1;
        if depth >= 16 {
            break;
        }
    }
    text
}

impl TaskError {
    /// A converter for `map_err`: any displayable error as the built-in
    /// Python exception `exc_type`, with the error's text as its message:
    /// `fs_check(path).map_err(TaskError::from_display("ValueError"))?`.
    pub fn from_display<E: std::fmt::Display>(exc_type: &'static str) -> impl Fn(E) -> TaskError {
        move |e| TaskError::builtin(exc_type, e.to_string())
    }

    /// A converter for `map_err`: an error and its `source()` chain
    /// (`"cannot open catalog: connection refused"`) as the built-in Python
    /// exception `exc_type`.
    pub fn from_error<E: std::error::Error + 'static>(exc_type: &'static str) -> impl Fn(E) -> TaskError {
        move |e| TaskError::builtin(exc_type, with_sources(&e))
    }

    /// An I/O error as Python raises it: with an OS error, the `OSError`
    /// subclass for its errno and the arguments `(errno, strerror)`, so the
    /// Python side reads `.errno` and `.strerror`; without one, the subclass
    /// for its kind with its message.
    pub fn from_io(e: &std::io::Error) -> TaskError {
        match e.raw_os_error() {
            Some(errno) => {
                let text = e.to_string();
                let suffix = format!(" (os error {errno})");
                let strerror = text.strip_suffix(&suffix).unwrap_or(&text).to_owned();
                TaskError::Failure {
                    exc_type: errno_class(errno).into(),
                    exc_module: "builtins".into(),
                    message: format!("[Errno {errno}] {strerror}"),
                    args: Some(Box::new(vec![Value::Int(i64::from(errno)), Value::Str(strerror)])),
                    traceback: None,
                    kind: None,
                }
            }
            None => TaskError::builtin(kind_class(e.kind()), with_sources(e)),
        }
    }
}

/// `?` on I/O: the `OSError` (subclass) Python would raise, with its errno
/// ([`TaskError::from_io`]).
impl From<std::io::Error> for TaskError {
    fn from(e: std::io::Error) -> TaskError {
        TaskError::from_io(&e)
    }
}

/// `?` on JSON: `ValueError`, as `json.loads` raises (`OSError` for a
/// reader's I/O error).
impl From<serde_json::Error> for TaskError {
    fn from(e: serde_json::Error) -> TaskError {
        if e.is_io() {
            let kind = e.io_error_kind().unwrap_or(std::io::ErrorKind::Other);
            return TaskError::builtin(kind_class(kind), e.to_string());
        }
        TaskError::builtin("ValueError", e.to_string())
    }
}

/// `?` on `str::parse::<i64>()`: `ValueError`, as `int("x")` raises.
impl From<std::num::ParseIntError> for TaskError {
    fn from(e: std::num::ParseIntError) -> TaskError {
        TaskError::builtin("ValueError", e.to_string())
    }
}

/// `?` on `str::parse::<f64>()`: `ValueError`, as `float("x")` raises.
impl From<std::num::ParseFloatError> for TaskError {
    fn from(e: std::num::ParseFloatError) -> TaskError {
        TaskError::builtin("ValueError", e.to_string())
    }
}

/// `?` on `std::str::from_utf8`: `ValueError` (Python's `UnicodeDecodeError`
/// is one, but cannot be rebuilt from a message).
impl From<std::str::Utf8Error> for TaskError {
    fn from(e: std::str::Utf8Error) -> TaskError {
        TaskError::builtin("ValueError", e.to_string())
    }
}

/// `?` on `String::from_utf8`: `ValueError`, as for [`std::str::Utf8Error`].
impl From<std::string::FromUtf8Error> for TaskError {
    fn from(e: std::string::FromUtf8Error) -> TaskError {
        TaskError::builtin("ValueError", e.to_string())
    }
}

/// `?` on `tokio::time::timeout(...)`: `TimeoutError`.
impl From<tokio::time::error::Elapsed> for TaskError {
    fn from(e: tokio::time::error::Elapsed) -> TaskError {
        TaskError::builtin("TimeoutError", e.to_string())
    }
}

/// `?` on building or sending a canvas from a task (`sig.to_wire()?`,
/// `client.apply_async(&sig).await?`): an invalid signature is a
/// `ValueError`, a broker that refuses the message kombu's
/// `OperationalError`, a chord without a result backend
/// `NotImplementedError` (as Celery's disabled backend raises).
impl From<celeriac_client::CanvasError> for TaskError {
    fn from(e: celeriac_client::CanvasError) -> TaskError {
        use celeriac_client::CanvasError as C;
        match &e {
            C::Invalid { .. } => TaskError::builtin("ValueError", e.to_string()),
            C::Broker(_) => TaskError::custom("kombu.exceptions", "OperationalError", e.to_string()),
            C::NoBackend(_) => TaskError::builtin("NotImplementedError", e.to_string()),
            C::ChordSize { .. } => TaskError::builtin("RuntimeError", e.to_string()),
        }
    }
}

/// `?` on a boxed error: `RuntimeError` with its message and sources.
impl From<Box<dyn std::error::Error + Send + Sync>> for TaskError {
    fn from(e: Box<dyn std::error::Error + Send + Sync>) -> TaskError {
        TaskError::builtin("RuntimeError", with_sources(&*e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class_and_args(e: TaskError) -> (String, Vec<Value>) {
        let exc = e.exception();
        assert_eq!(exc.exc_module.as_deref(), Some("builtins"));
        (exc.exc_type, exc.exc_message)
    }

    #[test]
    fn io_errors_are_oserrors_with_errno() {
        let missing = std::fs::File::open("/nonexistent/celeriac/file").unwrap_err();
        let errno = missing.raw_os_error().unwrap();
        let e = TaskError::from(missing);
        assert_eq!(e.to_string(), format!("FileNotFoundError(\"[Errno {errno}] No such file or directory\")"));
        let (class, args) = class_and_args(e);
        assert_eq!(class, "FileNotFoundError");
        assert_eq!(args, [Value::Int(i64::from(errno)), Value::Str("No such file or directory".into())]);

        let custom = std::io::Error::new(std::io::ErrorKind::TimedOut, "tape did not answer");
        assert_eq!(class_and_args(custom.into()), ("TimeoutError".into(), vec!["tape did not answer".into()]));
        let other = std::io::Error::other("odd");
        assert_eq!(class_and_args(other.into()), ("OSError".into(), vec!["odd".into()]));
    }

    #[test]
    fn question_mark_on_common_errors() {
        fn parse(s: &str) -> Result<i64, TaskError> {
            Ok(s.parse::<i64>()?)
        }
        assert_eq!(class_and_args(parse("x").unwrap_err()).0, "ValueError");
        fn json(s: &str) -> Result<serde_json::Value, TaskError> {
            Ok(serde_json::from_str(s)?)
        }
        let (class, args) = class_and_args(json("{\"a\":").unwrap_err());
        assert_eq!(class, "ValueError");
        assert!(args[0].as_str().unwrap().contains("EOF"), "{args:?}");
        fn utf8(b: Vec<u8>) -> Result<String, TaskError> {
            Ok(String::from_utf8(b)?)
        }
        assert_eq!(class_and_args(utf8(vec![0xff]).unwrap_err()).0, "ValueError");
        fn boxed() -> Result<(), TaskError> {
            Err(Box::<dyn std::error::Error + Send + Sync>::from("pool closed"))?
        }
        assert_eq!(class_and_args(boxed().unwrap_err()), ("RuntimeError".into(), vec!["pool closed".into()]));
    }

    #[test]
    fn other_errors_map_at_the_call() {
        #[derive(Debug, thiserror::Error)]
        #[error("cannot open catalog")]
        struct Outer(#[source] std::io::Error);

        let outer = Outer(std::io::Error::other("connection refused"));
        let e: Result<(), _> = Err(outer).map_err(TaskError::from_error("LookupError"));
        assert_eq!(
            class_and_args(e.unwrap_err()),
            ("LookupError".into(), vec!["cannot open catalog: connection refused".into()])
        );
        let e: Result<(), _> = Err("bad run").map_err(TaskError::from_display("ValueError"));
        assert_eq!(class_and_args(e.unwrap_err()), ("ValueError".into(), vec!["bad run".into()]));
    }

    #[tokio::test]
    async fn elapsed_is_a_timeout_error() {
        let r: Result<(), TaskError> = async {
            tokio::time::timeout(std::time::Duration::from_millis(1), std::future::pending::<()>()).await?;
            Ok(())
        }
        .await;
        assert_eq!(class_and_args(r.unwrap_err()).0, "TimeoutError");
    }
}
