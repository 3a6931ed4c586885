//! The `conformance` set: the tasks of Celery's own integration suite
//! (`t/integration/tasks.py` at Celery 5.7.0) under the same names
//! (`t.integration.tasks.add`, ...), with the same options and the same
//! behaviour, plus Celery's `celery.ping`; so `test_tasks.py`,
//! `test_inspect.py` and much of `test_canvas.py` can run against a celeriac
//! worker. Written from the Python source's behaviour, not translated from it.
//!
//! Tasks that touch Redis use the suite's Redis ([`TaskSetConfig::resolved_suite_redis_url`]:
//! `REDIS_HOST`/`REDIS_PORT` as the suite reads them). The tasks the worker
//! cannot run yet are listed in [`LEFT_OUT`] with the reason.

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use celeriac_protocol::result::python_str;
use celeriac_protocol::task::Seconds;
use celeriac_protocol::{ExceptionInfo, Map, Value};
use celeriac_worker::{Ctx, RawArgs, Registry, Task, TaskError};

use crate::pyargs::{Param, PySignature};
use crate::pyexc::{self, Retry};
use crate::pyops;
use crate::redis_link::{redis_arg, redis_error, RedisLink};
use crate::{TaskSet, TaskSetConfig, TaskSetError};

/// The set, as [`crate::SETS`] lists it.
pub const SET: TaskSet = TaskSet::new(
    "conformance",
    "the tasks of Celery 5.7's integration suite (t.integration.tasks.*) and celery.ping",
    registry,
);

/// The Python module the suite's tasks and exceptions live in.
pub const MODULE: &str = "t.integration.tasks";

/// The suite's tasks this set does not have, each with the reason (names
/// without the module prefix). Everything else in `tasks.py` is registered.
pub const LEFT_OUT: &[(&str, &str)] = &[
    ("chain_add", SENDS),
    ("chord_add", SENDS),
    ("replace_with_stamped_task", REPLACES),
    ("return_nested_signature_chain_chain", PYTHON_CANVAS),
    ("return_nested_signature_chain_group", PYTHON_CANVAS),
    ("return_nested_signature_chain_chord", PYTHON_CANVAS),
    ("return_nested_signature_group_chain", PYTHON_CANVAS),
    ("return_nested_signature_group_group", PYTHON_CANVAS),
    ("return_nested_signature_group_chord", PYTHON_CANVAS),
    ("return_nested_signature_chord_chain", PYTHON_CANVAS),
    ("return_nested_signature_chord_group", PYTHON_CANVAS),
    ("return_nested_signature_chord_chord", PYTHON_CANVAS),
    ("rebuild_signature", PYTHON_CANVAS),
];

const SENDS: &str = "sends a chain or chord from inside the task; the task API has no producer";
const REPLACES: &str = "stamps its replacement in on_replace (a custom Task class); celeriac does not stamp yet";
const PYTHON_CANVAS: &str =
    "builds or rebuilds Python canvas objects (chain/group/chord, Signature.from_dict); the test is about Python's \
     own deserialisation";

mod canvas;

/// The full name of a suite task.
pub fn task_name(short: &str) -> String {
    format!("{MODULE}.{short}")
}

/// The set's tasks. The Redis URL is read now; the connection is made on
/// the first task that needs it.
pub fn registry(config: &TaskSetConfig) -> Result<Registry, TaskSetError> {
    // The suite's connection has no socket timeout: callers block on it.
    let redis = Arc::new(RedisLink::new(SET.name(), &config.resolved_suite_redis_url(), None, None, None)?);
    let attempts = Arc::new(AtomicU32::new(0));
    let mut r = Registry::new();
    r.add(Task::new("celery.ping", celery_ping));
    r.add(Task::new(task_name("identity"), identity));
    r.add(Task::new(task_name("add"), add));
    r.add(Task::new(task_name("mul"), mul));
    r.add(Task::new(task_name("write_to_file_and_return_int"), write_to_file_and_return_int));
    r.add(Task::new(task_name("add_not_typed"), add_not_typed));
    r.add(Task::new(task_name("add_ignore_result"), add_ignore_result).ignore_result(true));
    r.add(Task::new(task_name("add_with_result"), add_with_result).ignore_result(false));
    r.add(Task::new(task_name("raise_error"), raise_error));
    r.add(Task::new(task_name("delayed_sum"), delayed_sum));
    r.add(Task::new(task_name("delayed_sum_with_soft_guard"), delayed_sum_with_soft_guard));
    r.add(Task::new(task_name("tsum"), tsum));
    r.add(Task::new(task_name("xsum"), xsum));
    r.add(with_redis(task_name("sum_and_record"), &redis, sum_and_record));
    r.add(Task::new(task_name("print_unicode"), print_unicode));
    r.add(Task::new(task_name("return_exception"), return_exception));
    r.add(Task::new(task_name("sleeping"), sleeping));
    r.add(Task::new(task_name("ids"), ids));
    r.add(Task::new(task_name("collect_ids"), collect_ids));
    r.add(
        Task::new(task_name("retry"), move |ctx: Ctx, raw: RawArgs| {
            let attempts = attempts.clone();
            async move { retry(&attempts, ctx, raw) }
        })
        .default_retry_delay(Duration::from_secs(1)),
    );
    r.add(Task::new(task_name("retry_unpickleable"), retry_unpickleable).default_retry_delay(Duration::from_secs(1)));
    r.add(Task::new(task_name("retry_with_args_after_kwargs"), retry_with_args_after_kwargs).max_retries(Some(1)));
    r.add(Task::new(task_name("retry_with_kwargs_after_args"), retry_with_kwargs_after_args).max_retries(Some(1)));
    r.add(Task::new(task_name("retry_once"), retry_once).max_retries(Some(1)));
    r.add(Task::new(task_name("retry_once_ignore_result"), retry_once_plain).ignore_result(true));
    r.add(Task::new(task_name("retry_once_with_result"), retry_once_plain).ignore_result(false));
    r.add(Task::new(task_name("retry_once_priority"), retry_once_priority).max_retries(Some(1)));
    r.add(Task::new(task_name("retry_once_headers"), retry_once_headers).max_retries(Some(1)));
    r.add(with_redis(task_name("redis_echo"), &redis, redis_echo));
    r.add(with_redis(task_name("redis_echo_group_id"), &redis, redis_echo_group_id));
    r.add(with_redis(task_name("redis_count"), &redis, redis_count));
    r.add(Task::new(task_name("fail"), fail));
    r.add(Task::new(task_name("fail_unpickleable"), fail_unpickleable));
    r.add(Task::new(task_name("return_priority"), return_priority));
    r.add(Task::new(task_name("return_request_eta"), return_request_eta));
    r.add(Task::new(task_name("return_properties"), return_properties));
    // A class-based task registered under a bare name.
    r.add(
        Task::new("auto_retry_class_task", auto_retry_class_task)
            .max_retries(Some(1))
            .autoretry_for(["ValueError"], Some(Duration::from_secs(1))),
    );
    r.add(with_redis(task_name("errback_old_style"), &redis, errback_old_style));
    r.add(with_redis(task_name("errback_old_style_with_args"), &redis, errback_old_style_with_args));
    r.add(Task::new(task_name("replaced_with_me"), replaced_with_me));
    canvas::register(&mut r, &redis);
    r.add(Task::new(task_name("add_pydantic"), add_pydantic));
    r.add(Task::new(task_name("add_pydantic_string_annotations"), add_pydantic));
    r.add(Task::new(task_name("store_success_then_reject"), store_success_then_reject).acks_late(true));
    r.add(Task::new(task_name("reject_then_succeed"), reject_then_succeed).acks_late(true));
    r.add(Task::new(task_name("reject_without_requeue"), reject_without_requeue));
    r.add(
        Task::new(task_name("soft_time_limit_must_exceed_time_limit"), soft_time_limit_must_exceed_time_limit)
            .soft_time_limit(Duration::from_secs(2))
            .time_limit(Duration::from_secs(1)),
    );
    r.add(Task::new(task_name("return_request_time_limits"), return_request_time_limits));
    r.add(
        Task::new(task_name("task_with_declared_time_limits"), return_request_time_limits)
            .time_limit(Duration::from_secs(60))
            .soft_time_limit(Duration::from_secs(45)),
    );
    Ok(r)
}

/// A task whose handler also gets the suite's Redis.
pub(super) fn with_redis<F, Fut>(name: String, link: &Arc<RedisLink>, f: F) -> Task
where
    F: Fn(Arc<RedisLink>, Ctx, RawArgs) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, TaskError>> + Send + 'static,
{
    let link = link.clone();
    Task::new(name, move |ctx: Ctx, raw: RawArgs| f(link.clone(), ctx, raw))
}

pub(super) type Outcome = Result<Value, TaskError>;

// ---- exceptions of tasks.py ----

/// `ExpectedException(*args)` of the suite's module.
pub(super) fn expected_exception(args: Vec<Value>) -> ExceptionInfo {
    pyexc::exception(MODULE, "ExpectedException", args)
}

/// `UnpickleableException(foo, bar)`: refuses a missing `bar`, keeps only `foo` as its argument.
fn unpickleable_exception(first: Value, second: &Value) -> Result<ExceptionInfo, TaskError> {
    if second.is_null() {
        return Err(TaskError::builtin("TypeError", "bar must be provided"));
    }
    Ok(pyexc::exception(MODULE, "UnpickleableException", vec![first]))
}

// ---- argument helpers ----

/// A `countdown` argument: `None` means the task's default delay; a negative
/// one runs at once.
fn countdown(v: Value) -> Result<Option<Duration>, TaskError> {
    match v {
        Value::Null => Ok(None),
        Value::Int(i) if i < 0 => Ok(Some(Duration::ZERO)),
        Value::Float(f) if f < 0.0 => Ok(Some(Duration::ZERO)),
        other => pyops::seconds(&other).map(Some),
    }
}

/// A `max_retries` argument: `None` means the task's own.
fn max_retries(v: Value, task_default: u32) -> Result<Option<u32>, TaskError> {
    match v {
        Value::Null => Ok(Some(task_default)),
        Value::Int(i) => Ok(Some(u32::try_from(i.max(0)).unwrap_or(u32::MAX))),
        other => Err(TaskError::builtin(
            "TypeError",
            format!("'>' not supported between instances of 'int' and '{}'", pyops::type_name(&other)),
        )),
    }
}

/// Whether this delivery is a redelivery (`request.delivery_info['redelivered']`).
fn redelivered(ctx: &Ctx) -> bool {
    ctx.request().redelivered || ctx.delivery_info().redelivered == Some(true)
}

fn seconds_value(s: Option<Seconds>) -> Value {
    match s {
        None => Value::Null,
        Some(Seconds::Int(i)) => Value::Int(i),
        Some(Seconds::Float(f)) => Value::Float(f),
    }
}

// ---- the tasks, in the order of tasks.py ----

const NO_ARGS: PySignature = PySignature::new("run", &[]);

async fn celery_ping(RawArgs(args, kwargs): RawArgs) -> Outcome {
    PySignature { function: "ping", ..NO_ARGS }.bind(args, kwargs)?;
    Ok(Value::Str("pong".into()))
}

const IDENTITY: PySignature = PySignature::new("identity", &[Param::required("x")]);

async fn identity(RawArgs(args, kwargs): RawArgs) -> Outcome {
    let mut b = IDENTITY.bind(args, kwargs)?;
    Ok(b.take_or("x", Value::Null))
}

const ADD: PySignature = PySignature::new("add", &[Param::required("x"), Param::required("y"), Param::optional("z")]);

async fn add(RawArgs(args, kwargs): RawArgs) -> Outcome {
    let mut b = ADD.bind(args, kwargs)?;
    let (x, y, z) = (b.take_or("x", Value::Null), b.take_or("y", Value::Null), b.take_or("z", Value::Null));
    let sum = pyops::add(&x, &y)?;
    if pyops::truthy(&z) {
        pyops::add(&sum, &z)
    } else {
        Ok(sum)
    }
}

const MUL: PySignature = PySignature::new("mul", &[Param::required("x"), Param::required("y")]);

async fn mul(RawArgs(args, kwargs): RawArgs) -> Outcome {
    let mut b = MUL.bind(args, kwargs)?;
    pyops::mul(&b.take_or("x", Value::Null), &b.take_or("y", Value::Null))
}

const WRITE_TO_FILE: PySignature =
    PySignature::new("write_to_file_and_return_int", &[Param::required("file_name"), Param::required("i")]);

async fn write_to_file_and_return_int(RawArgs(args, kwargs): RawArgs) -> Outcome {
    use tokio::io::AsyncWriteExt;
    let mut b = WRITE_TO_FILE.bind(args, kwargs)?;
    let (file_name, i) = (b.take_or("file_name", Value::Null), b.take_or("i", Value::Null));
    let path = match &file_name {
        Value::Str(s) => std::path::PathBuf::from(s),
        other => {
            return Err(TaskError::builtin(
                "TypeError",
                format!("expected str, bytes or os.PathLike object, not {}", pyops::type_name(other)),
            ))
        }
    };
    let line = format!("{}\n", python_str(&i));
    let written = async {
        let mut file = tokio::fs::OpenOptions::new().append(true).create(true).open(&path).await?;
        file.write_all(line.as_bytes()).await?;
        file.flush().await
    };
    written.await.map_err(|e| os_error(&e, &path))?;
    Ok(i)
}

/// An I/O error as Python raises it: `FileNotFoundError`, `PermissionError`, else `OSError`.
fn os_error(e: &std::io::Error, path: &std::path::Path) -> TaskError {
    let exc_type = match e.kind() {
        std::io::ErrorKind::NotFound => "FileNotFoundError",
        std::io::ErrorKind::PermissionDenied => "PermissionError",
        std::io::ErrorKind::AlreadyExists => "FileExistsError",
        _ => "OSError",
    };
    let errno = e.raw_os_error().map(|n| format!("[Errno {n}] ")).unwrap_or_default();
    TaskError::builtin(exc_type, format!("{errno}{e}: '{}'", path.display()))
}

const ADD_NOT_TYPED: PySignature = PySignature::new("add_not_typed", &[Param::required("x"), Param::required("y")]);

async fn add_not_typed(RawArgs(args, kwargs): RawArgs) -> Outcome {
    let mut b = ADD_NOT_TYPED.bind(args, kwargs)?;
    pyops::add(&b.take_or("x", Value::Null), &b.take_or("y", Value::Null))
}

const ADD_IGNORE_RESULT: PySignature = PySignature { function: "add_ignore_result", ..ADD_NOT_TYPED };

async fn add_ignore_result(RawArgs(args, kwargs): RawArgs) -> Outcome {
    let mut b = ADD_IGNORE_RESULT.bind(args, kwargs)?;
    pyops::add(&b.take_or("x", Value::Null), &b.take_or("y", Value::Null))
}

const ADD_WITH_RESULT: PySignature = PySignature { function: "add_with_result", ..ADD_NOT_TYPED };

async fn add_with_result(RawArgs(args, kwargs): RawArgs) -> Outcome {
    let mut b = ADD_WITH_RESULT.bind(args, kwargs)?;
    pyops::add(&b.take_or("x", Value::Null), &b.take_or("y", Value::Null))
}

const RAISE_ERROR: PySignature = PySignature::new("raise_error", &[]).with_var_args();

async fn raise_error(RawArgs(args, kwargs): RawArgs) -> Outcome {
    RAISE_ERROR.bind(args, kwargs)?;
    Err(TaskError::builtin("ValueError", "deliberate error"))
}

const DELAYED_SUM: PySignature =
    PySignature::new("delayed_sum", &[Param::required("numbers"), Param::optional("pause_time")]);

async fn delayed_sum(ctx: Ctx, RawArgs(args, kwargs): RawArgs) -> Outcome {
    let mut b = DELAYED_SUM.bind(args, kwargs)?;
    pyops::sleep(&ctx, &b.take_or("pause_time", Value::Int(1))).await?;
    pyops::sum(&b.take_or("numbers", Value::Null))
}

const DELAYED_SUM_GUARDED: PySignature = PySignature { function: "delayed_sum_with_soft_guard", ..DELAYED_SUM };

async fn delayed_sum_with_soft_guard(ctx: Ctx, RawArgs(args, kwargs): RawArgs) -> Outcome {
    let mut b = DELAYED_SUM_GUARDED.bind(args, kwargs)?;
    let pause = pyops::seconds(&b.take_or("pause_time", Value::Int(1)))?;
    tokio::select! {
        _ = tokio::time::sleep(pause) => pyops::sum(&b.take_or("numbers", Value::Null)),
        _ = ctx.soft_time_limit() => Ok(Value::Int(0)),
    }
}

const TSUM: PySignature = PySignature::new("tsum", &[Param::required("nums")]);

async fn tsum(RawArgs(args, kwargs): RawArgs) -> Outcome {
    let mut b = TSUM.bind(args, kwargs)?;
    pyops::sum(&b.take_or("nums", Value::Null))
}

const XSUM: PySignature = PySignature::new("xsum", &[Param::required("nums")]);

async fn xsum(RawArgs(args, kwargs): RawArgs) -> Outcome {
    let mut b = XSUM.bind(args, kwargs)?;
    let mut total = Value::Int(0);
    for num in pyops::iterate(&b.take_or("nums", Value::Null))? {
        let part = if pyops::is_iterable(&num) { pyops::sum(&num)? } else { num };
        total = pyops::add(&total, &part)?;
    }
    Ok(total)
}

const SUM_AND_RECORD: PySignature =
    PySignature::new("sum_and_record", &[Param::required("values"), Param::required("redis_key")]);

async fn sum_and_record(redis: Arc<RedisLink>, ctx: Ctx, RawArgs(args, kwargs): RawArgs) -> Outcome {
    let mut b = SUM_AND_RECORD.bind(args, kwargs)?;
    let result = pyops::sum(&b.take_or("values", Value::Null))?;
    rpush(&redis, &b.take_or("redis_key", Value::Null), &Value::Str(ctx.id().to_owned())).await?;
    Ok(result)
}

const PRINT_UNICODE: PySignature =
    PySignature::new("print_unicode", &[Param::optional("log_message"), Param::optional("print_message")]);

async fn print_unicode(RawArgs(args, kwargs): RawArgs) -> Outcome {
    let mut b = PRINT_UNICODE.bind(args, kwargs)?;
    let log_message = b.take_or("log_message", Value::Str("håå®ƒ valmuefrø".into()));
    let print_message = b.take_or("print_message", Value::Str("hiöäüß".into()));
    tracing::warn!(target: "t.integration.tasks", "{}", python_str(&log_message));
    // A Celery worker redirects print() to its log at WARNING.
    tracing::warn!(target: "celery.redirected", "{}", python_str(&print_message));
    Ok(Value::Null)
}

const RETURN_EXCEPTION: PySignature = PySignature::new("return_exception", &[Param::required("e")]);

async fn return_exception(RawArgs(args, kwargs): RawArgs) -> Outcome {
    let mut b = RETURN_EXCEPTION.bind(args, kwargs)?;
    Ok(Value::List(vec![b.take_or("e", Value::Null), Value::Bool(true)]))
}

const SLEEPING: PySignature = PySignature::new("sleeping", &[Param::required("i")]).with_var_kwargs();

async fn sleeping(ctx: Ctx, RawArgs(args, kwargs): RawArgs) -> Outcome {
    let mut b = SLEEPING.bind(args, kwargs)?;
    pyops::sleep(&ctx, &b.take_or("i", Value::Null)).await?;
    Ok(Value::Null)
}

const IDS: PySignature = PySignature::new("ids", &[Param::required("i")]);

fn id_triple(ctx: &Ctx, i: Value) -> Value {
    Value::List(vec![Value::from(ctx.root_id()), Value::from(ctx.parent_id()), i])
}

async fn ids(ctx: Ctx, RawArgs(args, kwargs): RawArgs) -> Outcome {
    let mut b = IDS.bind(args, kwargs)?;
    Ok(id_triple(&ctx, b.take_or("i", Value::Null)))
}

const COLLECT_IDS: PySignature = PySignature::new("collect_ids", &[Param::required("res"), Param::required("i")]);

async fn collect_ids(ctx: Ctx, RawArgs(args, kwargs): RawArgs) -> Outcome {
    let mut b = COLLECT_IDS.bind(args, kwargs)?;
    let res = b.take_or("res", Value::Null);
    Ok(Value::List(vec![res, id_triple(&ctx, b.take_or("i", Value::Null))]))
}

const RETRY: PySignature = PySignature::new("retry", &[Param::optional("return_value")]);

/// `retry(return_value=None)`: with a return value, the worker-wide attempt
/// counter (an attribute on the Python task object) lets it return on the
/// fourth attempt; otherwise it retries (countdown 5, max 3) with
/// `ExpectedException()` and finally fails with it.
fn retry(attempts: &AtomicU32, ctx: Ctx, RawArgs(args, kwargs): RawArgs) -> Outcome {
    let mut b = RETRY.bind(args, kwargs)?;
    let return_value = b.take_or("return_value", Value::Null);
    if pyops::truthy(&return_value) {
        let next = |attempt: u32| Some(if attempt >= 3 { 0 } else { attempt + 1 });
        let attempt = match attempts.fetch_update(Ordering::SeqCst, Ordering::SeqCst, next) {
            Ok(previous) | Err(previous) => previous,
        };
        tracing::warn!(target: "celery.redirected", "attempt {attempt}");
        if attempt >= 3 {
            return Ok(return_value);
        }
    }
    Err(pyexc::retry(&ctx, Retry::new(Some(Duration::from_secs(5)), Some(3)).with_exc(expected_exception(vec![]))))
}

const RETRY_UNPICKLEABLE: PySignature = PySignature::new(
    "retry_unpickleable",
    &[Param::required("foo"), Param::required("bar"), Param::keyword_required("retry_kwargs")],
);

async fn retry_unpickleable(ctx: Ctx, RawArgs(args, kwargs): RawArgs) -> Outcome {
    let mut b = RETRY_UNPICKLEABLE.bind(args, kwargs)?;
    let mut options = match b.take_or("retry_kwargs", Value::Null) {
        Value::Map(m) => m,
        other => {
            return Err(TaskError::builtin(
                "TypeError",
                format!(
                    "t.integration.tasks.retry() argument after ** must be a mapping, not {}",
                    pyops::type_name(&other)
                ),
            ))
        }
    };
    let exc = unpickleable_exception(b.take_or("foo", Value::Null), &b.take_or("bar", Value::Null))?;
    let countdown = countdown(options.shift_remove("countdown").unwrap_or(Value::Null))?;
    let max = max_retries(options.shift_remove("max_retries").unwrap_or(Value::Null), 3)?;
    Err(pyexc::retry(&ctx, Retry::new(countdown, max).with_exc(exc)))
}

const RETRY_ONCE: PySignature = PySignature::new(
    "retry_once",
    &[Param::keyword_optional("expires"), Param::keyword_optional("max_retries"), Param::keyword_optional("countdown")],
)
.with_var_args();

/// `retry_once(*args, expires=None, max_retries=1, countdown=0.1)`: returns
/// the retry count once retried. (`expires` would set the retry's expiry; a
/// retry cannot carry one, and none of the suite's calls lets it lapse.)
/// What `self.retry(args=...)` or `self.retry(kwargs=...)` sends, given the
/// request's arguments and the task's positional parameter names, as Celery
/// 5.7 merges them (#6494): new positional arguments drop the inherited
/// keywords they now cover; new keywords replace inherited positionals of the
/// same name.
fn retry_arguments(
    params: &[&str],
    request_args: &[Value],
    request_kwargs: &Map,
    args: Option<Vec<Value>>,
    kwargs: Option<Map>,
) -> (Vec<Value>, Map) {
    match (args, kwargs) {
        (Some(args), None) => {
            let mut kwargs = request_kwargs.clone();
            for name in params.iter().take(args.len()) {
                kwargs.shift_remove(*name);
            }
            (args, kwargs)
        }
        (None, Some(mut kwargs)) => {
            let mut args = request_args.to_vec();
            for (i, name) in params.iter().enumerate().take(args.len()) {
                if let Some(v) = kwargs.shift_remove(*name) {
                    args[i] = v;
                }
            }
            (args, kwargs)
        }
        (args, kwargs) => {
            (args.unwrap_or_else(|| request_args.to_vec()), kwargs.unwrap_or_else(|| request_kwargs.clone()))
        }
    }
}

const RETRY_WITH_ARGS: PySignature = PySignature::new(
    "retry_with_args_after_kwargs",
    &[Param::required("foo"), Param::required("bar"), Param::optional("label")],
);

/// `retry_with_args_after_kwargs(foo, bar, label=None)`: the first run
/// retries with `args=(foo + 1, bar + 1)`; the retry reports what it got.
async fn retry_with_args_after_kwargs(ctx: Ctx, RawArgs(args, kwargs): RawArgs) -> Outcome {
    let (request_args, request_kwargs) = (args.clone(), kwargs.clone());
    let mut b = RETRY_WITH_ARGS.bind(args, kwargs)?;
    let (first, second, label) =
        (b.take_or("foo", Value::Null), b.take_or("bar", Value::Null), b.take_or("label", Value::Null));
    if ctx.retries() == 0 {
        let new = vec![pyops::add(&first, &Value::Int(1))?, pyops::add(&second, &Value::Int(1))?];
        let (args, kwargs) = retry_arguments(&["foo", "bar", "label"], &request_args, &request_kwargs, Some(new), None);
        let retry = pyexc::retry(&ctx, Retry::new(Some(Duration::ZERO), Some(1)));
        return Err(retry.with_arguments(Some(args), Some(kwargs)));
    }
    let mut m = Map::new();
    m.insert("foo".into(), first);
    m.insert("bar".into(), second);
    m.insert("label".into(), label);
    m.insert("retries".into(), Value::Int(ctx.retries()));
    m.insert("is_eager".into(), Value::Bool(false));
    Ok(Value::Map(m))
}

const RETRY_WITH_KWARGS: PySignature =
    PySignature::new("retry_with_kwargs_after_args", &[Param::required("foo"), Param::required("bar")]);

/// `retry_with_kwargs_after_args(first, second)`: the first run retries with
/// `kwargs={'first': first + 1}`; the retry reports what it got.
async fn retry_with_kwargs_after_args(ctx: Ctx, RawArgs(args, kwargs): RawArgs) -> Outcome {
    let (request_args, request_kwargs) = (args.clone(), kwargs.clone());
    let mut b = RETRY_WITH_KWARGS.bind(args, kwargs)?;
    let (first, second) = (b.take_or("foo", Value::Null), b.take_or("bar", Value::Null));
    if ctx.retries() == 0 {
        let mut new = Map::new();
        new.insert("foo".into(), pyops::add(&first, &Value::Int(1))?);
        let (args, kwargs) = retry_arguments(&["foo", "bar"], &request_args, &request_kwargs, None, Some(new));
        let retry = pyexc::retry(&ctx, Retry::new(Some(Duration::ZERO), Some(1)));
        return Err(retry.with_arguments(Some(args), Some(kwargs)));
    }
    let mut m = Map::new();
    m.insert("foo".into(), first);
    m.insert("bar".into(), second);
    m.insert("retries".into(), Value::Int(ctx.retries()));
    m.insert("is_eager".into(), Value::Bool(false));
    Ok(Value::Map(m))
}

async fn retry_once(ctx: Ctx, RawArgs(args, kwargs): RawArgs) -> Outcome {
    let mut b = RETRY_ONCE.bind(args, kwargs)?;
    if ctx.retries() > 0 {
        return Ok(Value::Int(ctx.retries()));
    }
    let countdown = countdown(b.take_or("countdown", Value::Float(0.1)))?;
    let max = max_retries(b.take_or("max_retries", Value::Int(1)), 1)?;
    Err(pyexc::retry(&ctx, Retry::new(countdown, max)))
}

/// `retry_once_ignore_result()` / `retry_once_with_result()`: retry at once,
/// then return the retry count.
async fn retry_once_plain(ctx: Ctx, RawArgs(args, kwargs): RawArgs) -> Outcome {
    NO_ARGS.bind(args, kwargs)?;
    if ctx.retries() > 0 {
        return Ok(Value::Int(ctx.retries()));
    }
    Err(pyexc::retry(&ctx, Retry::new(Some(Duration::ZERO), Some(3))))
}

const RETRY_ONCE_PRIORITY: PySignature = PySignature::new(
    "retry_once_priority",
    &[Param::keyword_optional("expires"), Param::keyword_optional("max_retries"), Param::keyword_optional("countdown")],
)
.with_var_args();

async fn retry_once_priority(ctx: Ctx, RawArgs(args, kwargs): RawArgs) -> Outcome {
    let mut b = RETRY_ONCE_PRIORITY.bind(args, kwargs)?;
    if ctx.retries() > 0 {
        return Ok(Value::Int(i64::from(ctx.priority())));
    }
    let countdown = countdown(b.take_or("countdown", Value::Float(0.1)))?;
    let max = max_retries(b.take_or("max_retries", Value::Int(1)), 1)?;
    Err(pyexc::retry(&ctx, Retry::new(countdown, max)))
}

const RETRY_ONCE_HEADERS: PySignature = PySignature::new(
    "retry_once_headers",
    &[Param::keyword_optional("max_retries"), Param::keyword_optional("countdown")],
)
.with_var_args();

/// Returns `request.headers`: the custom headers (those Celery does not
/// define), or `None` without any.
async fn retry_once_headers(ctx: Ctx, RawArgs(args, kwargs): RawArgs) -> Outcome {
    let mut b = RETRY_ONCE_HEADERS.bind(args, kwargs)?;
    if ctx.retries() > 0 {
        let custom = &ctx.headers().extra;
        return Ok(if custom.is_empty() { Value::Null } else { Value::Map(custom.clone()) });
    }
    let countdown = countdown(b.take_or("countdown", Value::Float(0.1)))?;
    let max = max_retries(b.take_or("max_retries", Value::Int(1)), 1)?;
    Err(pyexc::retry(&ctx, Retry::new(countdown, max)))
}

pub(super) async fn rpush(redis: &RedisLink, key: &Value, value: &Value) -> Result<(), TaskError> {
    let (key, value) = (redis_arg(key)?, redis_arg(value)?);
    let mut con = redis.connection().await?;
    redis::cmd("RPUSH")
        .arg(&key)
        .arg(value)
        .query_async::<()>(&mut con)
        .await
        .map_err(|e| redis_error(&format!("RPUSH {}", String::from_utf8_lossy(&key)), e))
}

pub(super) async fn incr(redis: &RedisLink, key: &Value) -> Result<(), TaskError> {
    let key = redis_arg(key)?;
    let mut con = redis.connection().await?;
    redis::cmd("INCR")
        .arg(&key)
        .query_async::<()>(&mut con)
        .await
        .map_err(|e| redis_error(&format!("INCR {}", String::from_utf8_lossy(&key)), e))
}

const REDIS_ECHO: PySignature =
    PySignature::new("redis_echo", &[Param::required("message"), Param::optional("redis_key")]);

async fn redis_echo(redis: Arc<RedisLink>, _ctx: Ctx, RawArgs(args, kwargs): RawArgs) -> Outcome {
    let mut b = REDIS_ECHO.bind(args, kwargs)?;
    let key = b.take_or("redis_key", Value::Str("redis-echo".into()));
    rpush(&redis, &key, &b.take_or("message", Value::Null)).await?;
    Ok(Value::Null)
}

const REDIS_ECHO_GROUP_ID: PySignature =
    PySignature::new("redis_echo_group_id", &[Param::required("_"), Param::optional("redis_key")]);

async fn redis_echo_group_id(redis: Arc<RedisLink>, ctx: Ctx, RawArgs(args, kwargs): RawArgs) -> Outcome {
    let mut b = REDIS_ECHO_GROUP_ID.bind(args, kwargs)?;
    let key = b.take_or("redis_key", Value::Str("redis-group-ids".into()));
    rpush(&redis, &key, &Value::from(ctx.group_id())).await?;
    Ok(Value::Null)
}

const REDIS_COUNT: PySignature = PySignature::new("redis_count", &[Param::optional("redis_key")]);

async fn redis_count(redis: Arc<RedisLink>, _ctx: Ctx, RawArgs(args, kwargs): RawArgs) -> Outcome {
    let mut b = REDIS_COUNT.bind(args, kwargs)?;
    incr(&redis, &b.take_or("redis_key", Value::Str("redis-count".into()))).await?;
    Ok(Value::Null)
}

const FAIL: PySignature = PySignature::new("fail", &[]).with_var_args();

async fn fail(RawArgs(args, kwargs): RawArgs) -> Outcome {
    let b = FAIL.bind(args, kwargs)?;
    let mut exc_args = vec![Value::Str("Task expected to fail".into())];
    exc_args.extend(b.var_args);
    Err(pyexc::raise(&expected_exception(exc_args)))
}

const FAIL_UNPICKLEABLE: PySignature =
    PySignature::new("fail_unpickleable", &[Param::required("foo"), Param::required("bar")]);

async fn fail_unpickleable(RawArgs(args, kwargs): RawArgs) -> Outcome {
    let mut b = FAIL_UNPICKLEABLE.bind(args, kwargs)?;
    let exc = unpickleable_exception(b.take_or("foo", Value::Null), &b.take_or("bar", Value::Null))?;
    Err(pyexc::raise(&exc))
}

const RETURN_PRIORITY: PySignature = PySignature::new("return_priority", &[]).with_var_args();

async fn return_priority(ctx: Ctx, RawArgs(args, kwargs): RawArgs) -> Outcome {
    RETURN_PRIORITY.bind(args, kwargs)?;
    Ok(Value::Str(format!("Priority: {}", ctx.priority())))
}

/// Returns the `eta` header as sent (an ISO-8601 string), or `None`.
async fn return_request_eta(ctx: Ctx, RawArgs(args, kwargs): RawArgs) -> Outcome {
    PySignature { function: "return_request_eta", ..NO_ARGS }.bind(args, kwargs)?;
    Ok(Value::from(ctx.eta().map(|eta| eta.to_iso())))
}

/// Returns the message properties (`app_id`, `correlation_id`, ...).
async fn return_properties(ctx: Ctx, RawArgs(args, kwargs): RawArgs) -> Outcome {
    PySignature { function: "return_properties", ..NO_ARGS }.bind(args, kwargs)?;
    Ok(Value::Map(ctx.properties().clone()))
}

/// `ClassBasedAutoRetryTask.run`: `ValueError()` on the first run (retried
/// automatically with backoff), the retry count after.
async fn auto_retry_class_task(ctx: Ctx, RawArgs(args, kwargs): RawArgs) -> Outcome {
    NO_ARGS.bind(args, kwargs)?;
    if ctx.retries() > 0 {
        return Ok(Value::Int(ctx.retries()));
    }
    Err(pyexc::raise(&pyexc::exception("builtins", "ValueError", vec![])))
}

const ERRBACK_OLD_STYLE: PySignature = PySignature::new("errback_old_style", &[Param::required("request_id")]);

/// Counts in the key named by the failed task's id, returns the id.
async fn errback_old_style(redis: Arc<RedisLink>, _ctx: Ctx, RawArgs(args, kwargs): RawArgs) -> Outcome {
    let mut b = ERRBACK_OLD_STYLE.bind(args, kwargs)?;
    let request_id = b.take_or("request_id", Value::Null);
    incr(&redis, &request_id).await?;
    Ok(request_id)
}

const ERRBACK_OLD_STYLE_WITH_ARGS: PySignature =
    PySignature::new("errback_old_style_with_args", &[Param::required("request_id"), Param::required("label")]);

/// Pushes `label` to the list named by the failed task's id.
async fn errback_old_style_with_args(redis: Arc<RedisLink>, _ctx: Ctx, RawArgs(args, kwargs): RawArgs) -> Outcome {
    let mut b = ERRBACK_OLD_STYLE_WITH_ARGS.bind(args, kwargs)?;
    let request_id = b.take_or("request_id", Value::Null);
    rpush(&redis, &request_id, &b.take_or("label", Value::Null)).await?;
    Ok(Value::Null)
}

async fn replaced_with_me(RawArgs(args, kwargs): RawArgs) -> Outcome {
    PySignature { function: "replaced_with_me", ..NO_ARGS }.bind(args, kwargs)?;
    Ok(Value::Bool(true))
}

const ADD_PYDANTIC: PySignature = PySignature::new("add_pydantic", &[Param::required("data")]);

/// `add_pydantic(data: AddParameterModel) -> AddResultModel`: validates
/// `{x: int, y: int}` as pydantic does in its default (lax) mode and returns
/// `{"result": x + y}`.
async fn add_pydantic(RawArgs(args, kwargs): RawArgs) -> Outcome {
    let mut b = ADD_PYDANTIC.bind(args, kwargs)?;
    let data = b.take_or("data", Value::Null);
    let Value::Map(fields) = &data else {
        return Err(validation_error(&[(
            None,
            format!(
                "Input should be a valid dictionary or instance of AddParameterModel [type=model_type, input_type={}]",
                pyops::type_name(&data)
            ),
        )]));
    };
    let mut problems = Vec::new();
    let mut field = |name: &'static str| match pydantic_int(fields.get(name)) {
        Ok(v) => Some(v),
        Err(problem) => {
            problems.push((Some(name), problem));
            None
        }
    };
    let (x, y) = (field("x"), field("y"));
    match (x, y) {
        (Some(x), Some(y)) => {
            let sum = x.checked_add(y).ok_or_else(|| TaskError::builtin("OverflowError", "int too large"))?;
            let mut result = Map::new();
            result.insert("result".into(), Value::from(sum));
            Ok(Value::Map(result))
        }
        _ => Err(validation_error(&problems)),
    }
}

/// An `int` field in pydantic's lax mode: ints, bools, floats without a
/// fraction, and strings of digits.
fn pydantic_int(v: Option<&Value>) -> Result<i128, String> {
    match v {
        None => Err("Field required [type=missing]".into()),
        Some(Value::Int(i)) => Ok(i128::from(*i)),
        Some(Value::BigInt(b)) => b.to_i128().ok_or_else(|| "Input should be a valid integer [type=int_type]".into()),
        Some(Value::Bool(b)) => Ok(i128::from(*b)),
        Some(Value::Float(f)) if f.fract() == 0.0 && f.abs() < 1e38 => Ok(*f as i128),
        Some(Value::Float(_)) => {
            Err("Input should be a valid integer, got a number with a fractional part [type=int_from_float]".into())
        }
        Some(Value::Str(s)) => s.trim().parse::<i128>().map_err(|_| {
            "Input should be a valid integer, unable to parse string as an integer [type=int_parsing]".to_owned()
        }),
        Some(other) => {
            Err(format!("Input should be a valid integer [type=int_type, input_type={}]", pyops::type_name(other)))
        }
    }
}

/// pydantic's `ValidationError` text: `N validation error(s) for Model`, then
/// each field and its problem.
fn validation_error(problems: &[(Option<&str>, String)]) -> TaskError {
    let plural = if problems.len() == 1 { "" } else { "s" };
    let mut text = format!("{} validation error{plural} for AddParameterModel", problems.len());
    for (field, problem) in problems {
        if let Some(field) = field {
            text.push('\n');
            text.push_str(field);
        }
        text.push_str("\n  ");
        text.push_str(problem);
    }
    TaskError::custom("pydantic_core._pydantic_core", "ValidationError", text)
}

/// First delivery: store SUCCESS (`first-pass`) by hand, then reject with
/// requeue; the redelivery returns `dedup-pass`.
async fn store_success_then_reject(ctx: Ctx, RawArgs(args, kwargs): RawArgs) -> Outcome {
    PySignature { function: "store_success_then_reject", ..NO_ARGS }.bind(args, kwargs)?;
    if !redelivered(&ctx) {
        ctx.update_state("SUCCESS", Value::Str("first-pass".into())).await?;
        return Err(TaskError::reject("", true));
    }
    Ok(Value::Str("dedup-pass".into()))
}

/// First delivery: reject with requeue; the redelivery returns `second-pass`.
async fn reject_then_succeed(ctx: Ctx, RawArgs(args, kwargs): RawArgs) -> Outcome {
    PySignature { function: "reject_then_succeed", ..NO_ARGS }.bind(args, kwargs)?;
    if !redelivered(&ctx) {
        return Err(TaskError::reject("", true));
    }
    Ok(Value::Str("second-pass".into()))
}

async fn reject_without_requeue(RawArgs(args, kwargs): RawArgs) -> Outcome {
    PySignature { function: "reject_without_requeue", ..NO_ARGS }.bind(args, kwargs)?;
    Err(TaskError::reject("rejected", false))
}

async fn soft_time_limit_must_exceed_time_limit(RawArgs(args, kwargs): RawArgs) -> Outcome {
    PySignature { function: "soft_time_limit_must_exceed_time_limit", ..NO_ARGS }.bind(args, kwargs)?;
    Ok(Value::Null)
}

/// `{"time_limit": hard, "soft_time_limit": soft}` from the request's
/// `timelimit` header, as Python's `request.time_limit`/`soft_time_limit`
/// read it (a task's declared limits reach it through the Python client,
/// which puts them in the header).
async fn return_request_time_limits(ctx: Ctx, RawArgs(args, kwargs): RawArgs) -> Outcome {
    NO_ARGS.bind(args, kwargs)?;
    let limits = ctx.headers().timelimit;
    let mut out = Map::new();
    out.insert("time_limit".into(), seconds_value(limits.hard));
    out.insert("soft_time_limit".into(), seconds_value(limits.soft));
    Ok(Value::Map(out))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use celeriac_protocol::time::PyDateTime;
    use celeriac_worker::{Invocation, RequestInfo, WorkerServices};
    use futures_util::future::BoxFuture;
    use tokio_util::sync::CancellationToken;

    /// Every task of `t/integration/tasks.py` at Celery 5.7.0.
    const SUITE_TASKS: &[&str] = &[
        "identity",
        "add",
        "mul",
        "write_to_file_and_return_int",
        "add_not_typed",
        "add_ignore_result",
        "add_with_result",
        "raise_error",
        "chain_add",
        "chord_add",
        "delayed_sum",
        "delayed_sum_with_soft_guard",
        "tsum",
        "xsum",
        "sum_and_record",
        "add_replaced",
        "record_replaced_task_nesting",
        "add_replaced_with_chain",
        "replace_with_chain",
        "replace_with_chain_which_raises",
        "replace_with_empty_chain",
        "replace_with_chain_which_contains_a_group",
        "add_to_all",
        "add_to_all_to_chord",
        "add_chord_to_chord",
        "print_unicode",
        "return_exception",
        "sleeping",
        "ids",
        "collect_ids",
        "retry",
        "retry_unpickleable",
        "retry_with_args_after_kwargs",
        "retry_with_kwargs_after_args",
        "retry_once",
        "retry_once_ignore_result",
        "retry_once_with_result",
        "retry_once_priority",
        "retry_once_headers",
        "redis_echo",
        "redis_echo_group_id",
        "redis_count",
        "second_order_replace1",
        "second_order_replace2",
        "build_chain_inside_task",
        "fail",
        "fail_unpickleable",
        "fail_replaced",
        "return_priority",
        "return_request_eta",
        "return_properties",
        "auto_retry_class_task",
        "return_nested_signature_chain_chain",
        "return_nested_signature_chain_group",
        "return_nested_signature_chain_chord",
        "return_nested_signature_group_chain",
        "return_nested_signature_group_group",
        "return_nested_signature_group_chord",
        "return_nested_signature_chord_chain",
        "return_nested_signature_chord_group",
        "return_nested_signature_chord_chord",
        "rebuild_signature",
        "errback_old_style",
        "errback_new_style",
        "errback_old_style_with_args",
        "errback_new_style_with_args",
        "replaced_with_me",
        "add_pydantic",
        "add_pydantic_string_annotations",
        "replace_with_stamped_task",
        "store_success_then_reject",
        "reject_then_succeed",
        "reject_without_requeue",
        "soft_time_limit_must_exceed_time_limit",
        "return_request_time_limits",
        "task_with_declared_time_limits",
    ];

    fn full(short: &str) -> String {
        if short == "auto_retry_class_task" || short.contains('.') {
            short.to_owned()
        } else {
            task_name(short)
        }
    }

    fn set() -> Registry {
        registry(&TaskSetConfig::default().with_suite_redis_url("redis://127.0.0.1:1/0")).unwrap()
    }

    fn request(name: &str) -> RequestInfo {
        let mut request = RequestInfo::default();
        request.headers.id = "task-1".into();
        request.headers.task = full(name);
        request
    }

    fn with_args(name: &str, args: Vec<Value>) -> RequestInfo {
        let mut r = request(name);
        r.args = args;
        r
    }

    fn kw(pairs: Vec<(&str, Value)>) -> Map {
        pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }

    fn s(text: &str) -> Value {
        Value::Str(text.into())
    }

    async fn run_ctx(reg: &Registry, ctx: Ctx) -> Outcome {
        let task = reg.get(ctx.name()).unwrap_or_else(|| panic!("{} is not registered", ctx.name()));
        task.handler().call(Invocation::new(ctx)).await
    }

    async fn run(reg: &Registry, request: RequestInfo) -> Outcome {
        run_ctx(reg, Ctx::detached(request)).await
    }

    #[track_caller]
    fn failure(outcome: Outcome) -> (String, String, String) {
        match outcome {
            Err(TaskError::Failure { exc_module, exc_type, message, .. }) => (exc_module, exc_type, message),
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[track_caller]
    fn retry_of(outcome: Outcome) -> (String, Option<Duration>, Option<u32>) {
        match outcome {
            Err(TaskError::Retry { reason, countdown, max_retries, eta: None, exc_type: None, .. }) => {
                (reason, countdown, max_retries)
            }
            other => panic!("expected a retry, got {other:?}"),
        }
    }

    #[test]
    fn retries_with_new_arguments_merge_them_as_celery_does() {
        let mut kwargs = Map::new();
        kwargs.insert("foo".into(), Value::Int(1));
        kwargs.insert("bar".into(), Value::Int(2));
        kwargs.insert("label".into(), s("kept"));
        let (args, kw) =
            retry_arguments(&["foo", "bar", "label"], &[], &kwargs, Some(vec![Value::Int(2), Value::Int(3)]), None);
        assert_eq!(args, vec![Value::Int(2), Value::Int(3)]);
        assert_eq!(kw.keys().collect::<Vec<_>>(), ["label"]);
        let mut new = Map::new();
        new.insert("foo".into(), Value::Int(2));
        let (args, kw) =
            retry_arguments(&["foo", "bar"], &[Value::Int(1), Value::Int(2)], &Map::new(), None, Some(new));
        assert_eq!((args, kw.len()), (vec![Value::Int(2), Value::Int(2)], 0));
    }

    #[test]
    fn every_suite_task_is_registered_or_left_out_with_a_reason() {
        let reg = set();
        for short in SUITE_TASKS {
            let left_out = LEFT_OUT.iter().any(|(name, _)| name == short);
            assert_ne!(reg.get(&full(short)).is_some(), left_out, "{short}");
        }
        for (name, reason) in LEFT_OUT {
            assert!(SUITE_TASKS.contains(name) && !reason.is_empty(), "{name}");
        }
        assert_eq!(reg.len(), SUITE_TASKS.len() - LEFT_OUT.len() + 1);
        assert!(reg.get("celery.ping").is_some());
    }

    #[test]
    fn options_follow_the_decorators() {
        let reg = set();
        let opts = |short: &str| reg.get(&full(short)).unwrap().options().clone();
        assert_eq!(opts("retry").default_retry_delay, Duration::from_secs(1));
        assert_eq!(opts("retry").max_retries, Some(3));
        assert_eq!(opts("retry_unpickleable").default_retry_delay, Duration::from_secs(1));
        for short in ["retry_once", "retry_once_priority", "retry_once_headers"] {
            assert_eq!(opts(short).max_retries, Some(1), "{short}");
        }
        assert_eq!(opts("add_ignore_result").ignore_result, Some(true));
        assert_eq!(opts("retry_once_ignore_result").ignore_result, Some(true));
        assert_eq!(opts("add_with_result").ignore_result, Some(false));
        assert_eq!(opts("retry_once_with_result").ignore_result, Some(false));
        assert_eq!(opts("add").ignore_result, None);
        assert_eq!(opts("reject_then_succeed").acks_late, Some(true));
        assert_eq!(opts("store_success_then_reject").acks_late, Some(true));
        assert_eq!(opts("reject_without_requeue").acks_late, None);
        let declared = opts("task_with_declared_time_limits");
        assert_eq!(
            (declared.time_limit, declared.soft_time_limit),
            (Some(Duration::from_secs(60)), Some(Duration::from_secs(45)))
        );
        let odd = opts("soft_time_limit_must_exceed_time_limit");
        assert_eq!((odd.time_limit, odd.soft_time_limit), (Some(Duration::from_secs(1)), Some(Duration::from_secs(2))));
        let auto = opts("auto_retry_class_task");
        assert_eq!((auto.max_retries, auto.autoretry_for.as_slice()), (Some(1), ["ValueError".to_owned()].as_slice()));
        assert_eq!((auto.retry_backoff, auto.retry_jitter), (Some(Duration::from_secs(1)), true));
    }

    #[tokio::test]
    async fn arithmetic_tasks() {
        let reg = set();
        let ints = |v: &[i64]| v.iter().map(|&i| Value::Int(i)).collect::<Vec<_>>();
        assert_eq!(run(&reg, with_args("add", ints(&[1, 2]))).await, Ok(Value::Int(3)));
        assert_eq!(run(&reg, with_args("add", ints(&[1, 2, 3]))).await, Ok(Value::Int(6)));
        assert_eq!(run(&reg, with_args("add", ints(&[1, 2, 0]))).await, Ok(Value::Int(3)));
        let mut r = with_args("add", ints(&[4]));
        r.kwargs = kw(vec![("y", Value::Int(4)), ("z", Value::Int(4))]);
        assert_eq!(run(&reg, r).await, Ok(Value::Int(12)));
        assert_eq!(run(&reg, with_args("add", vec![s("a"), s("b")])).await, Ok(s("ab")));
        assert_eq!(run(&reg, with_args("mul", ints(&[6, 7]))).await, Ok(Value::Int(42)));
        assert_eq!(run(&reg, with_args("add_ignore_result", ints(&[1, 2]))).await, Ok(Value::Int(3)));
        assert_eq!(run(&reg, with_args("add_with_result", ints(&[1, 2]))).await, Ok(Value::Int(3)));
        assert_eq!(run(&reg, with_args("tsum", vec![Value::List(ints(&[1, 2, 3]))])).await, Ok(Value::Int(6)));
        let nested = Value::List(vec![Value::Int(1), Value::List(ints(&[2, 3])), Value::Int(4)]);
        assert_eq!(run(&reg, with_args("xsum", vec![nested])).await, Ok(Value::Int(10)));
        assert_eq!(run(&reg, with_args("identity", vec![s("x")])).await, Ok(s("x")));
    }

    #[tokio::test]
    async fn wrong_arguments_fail_with_type_error() {
        let reg = set();
        let (module, exc_type, message) = failure(run(&reg, with_args("add_not_typed", vec![Value::Int(5)])).await);
        assert_eq!((module.as_str(), exc_type.as_str()), ("builtins", "TypeError"));
        assert_eq!(message, "add_not_typed() missing 1 required positional argument: 'y'");
        let mut r = with_args("add_not_typed", vec![Value::Int(5)]);
        r.kwargs = kw(vec![("wrong_arg", Value::Int(5))]);
        assert_eq!(failure(run(&reg, r).await).2, "add_not_typed() got an unexpected keyword argument 'wrong_arg'");
        let (_, exc_type, _) = failure(run(&reg, with_args("add", vec![Value::Int(1), s("a")])).await);
        assert_eq!(exc_type, "TypeError");
    }

    #[tokio::test]
    async fn failures_are_the_suites_exceptions() {
        let reg = set();
        let expected = (MODULE.to_owned(), "ExpectedException".to_owned(), "Task expected to fail".to_owned());
        assert_eq!(failure(run(&reg, request("fail")).await), expected);
        let with_arg = run(&reg, with_args("fail", vec![s("test")])).await;
        assert_eq!(with_arg.clone().unwrap_err().exception().exc_message, [s("Task expected to fail"), s("test")]);
        assert_eq!(failure(with_arg).2, "('Task expected to fail', 'test')");

        let unpickleable = failure(run(&reg, with_args("fail_unpickleable", vec![s("foo"), s("bar")])).await);
        assert_eq!(unpickleable, (MODULE.to_owned(), "UnpickleableException".to_owned(), "foo".to_owned()));
        let (_, exc_type, message) =
            failure(run(&reg, with_args("fail_unpickleable", vec![s("foo"), Value::Null])).await);
        assert_eq!((exc_type.as_str(), message.as_str()), ("TypeError", "bar must be provided"));

        let raised = failure(run(&reg, with_args("raise_error", vec![Value::Int(1), Value::Int(2)])).await);
        assert_eq!(raised, ("builtins".to_owned(), "ValueError".to_owned(), "deliberate error".to_owned()));

        assert_eq!(run(&reg, request("reject_without_requeue")).await, Err(TaskError::reject("rejected", false)));
    }

    #[tokio::test]
    async fn retry_retries_three_times_then_raises_or_returns() {
        let reg = set();
        let at = |retries: i64, args: Vec<Value>| {
            let mut r = with_args("retry", args);
            r.headers.retries = retries;
            r
        };
        for retries in 0..3 {
            let (reason, countdown, max) = retry_of(run(&reg, at(retries, vec![])).await);
            assert_eq!(
                (reason.as_str(), countdown, max),
                ("ExpectedException()", Some(Duration::from_secs(5)), Some(3))
            );
        }
        let (module, exc_type, _) = failure(run(&reg, at(3, vec![])).await);
        assert_eq!((module.as_str(), exc_type.as_str()), (MODULE, "ExpectedException"));

        // With a return value: the process-wide attempt counter lets the fourth run return it.
        for retries in 0..3 {
            retry_of(run(&reg, at(retries, vec![s("bar")])).await);
        }
        assert_eq!(run(&reg, at(3, vec![s("bar")])).await, Ok(s("bar")));
        retry_of(run(&reg, at(0, vec![s("bar")])).await); // the counter starts again
    }

    #[tokio::test]
    async fn retry_unpickleable_retries_then_raises_the_exception() {
        let reg = set();
        let call = |retries: i64| {
            let mut r = with_args("retry_unpickleable", vec![s("foo"), s("bar")]);
            r.kwargs = kw(vec![(
                "retry_kwargs",
                Value::Map(kw(vec![("countdown", Value::Int(10)), ("max_retries", Value::Int(1))])),
            )]);
            r.headers.retries = retries;
            r
        };
        let (reason, countdown, max) = retry_of(run(&reg, call(0)).await);
        assert_eq!(
            (reason.as_str(), countdown, max),
            ("UnpickleableException('foo')", Some(Duration::from_secs(10)), Some(1))
        );
        let (module, exc_type, message) = failure(run(&reg, call(1)).await);
        assert_eq!((module.as_str(), exc_type.as_str(), message.as_str()), (MODULE, "UnpickleableException", "foo"));
    }

    #[tokio::test]
    async fn retry_once_family() {
        let reg = set();
        let (_, countdown, max) = retry_of(run(&reg, request("retry_once")).await);
        assert_eq!((countdown, max), (Some(Duration::from_millis(100)), Some(1)));
        let mut r = request("retry_once");
        r.kwargs = kw(vec![("countdown", Value::Null), ("expires", Value::Int(60))]);
        assert_eq!(retry_of(run(&reg, r).await).1, None, "countdown=None uses the default delay");
        // As an errback: called with the failed task's id.
        let errback = with_args("retry_once", vec![s("failed-id")]);
        retry_of(run(&reg, errback).await);
        let mut r = request("retry_once");
        r.headers.retries = 1;
        assert_eq!(run(&reg, r).await, Ok(Value::Int(1)));

        for short in ["retry_once_ignore_result", "retry_once_with_result"] {
            assert_eq!(retry_of(run(&reg, request(short)).await).1, Some(Duration::ZERO));
            let mut r = request(short);
            r.headers.retries = 1;
            assert_eq!(run(&reg, r).await, Ok(Value::Int(1)));
        }

        retry_of(run(&reg, request("retry_once_priority")).await);
        let mut r = request("retry_once_priority");
        r.headers.retries = 1;
        r.priority = 7;
        assert_eq!(run(&reg, r).await, Ok(Value::Int(7)));

        retry_of(run(&reg, request("retry_once_headers")).await);
        let mut r = request("retry_once_headers");
        r.headers.retries = 1;
        assert_eq!(run(&reg, r.clone()).await, Ok(Value::Null));
        r.headers.extra.insert("x-test-header".into(), s("test-value"));
        assert_eq!(run(&reg, r).await, Ok(Value::Map(kw(vec![("x-test-header", s("test-value"))]))));
    }

    #[tokio::test]
    async fn auto_retry_class_task_fails_with_value_error_then_returns() {
        let reg = set();
        let (module, exc_type, _) = failure(run(&reg, request("auto_retry_class_task")).await);
        assert_eq!((module.as_str(), exc_type.as_str()), ("builtins", "ValueError"));
        let mut r = request("auto_retry_class_task");
        r.headers.retries = 1;
        assert_eq!(run(&reg, r).await, Ok(Value::Int(1)));
    }

    #[tokio::test]
    async fn request_introspection() {
        let reg = set();
        let mut r = with_args("ids", vec![Value::Int(5)]);
        r.headers.root_id = Some("root".into());
        r.headers.parent_id = Some("parent".into());
        assert_eq!(run(&reg, r.clone()).await, Ok(Value::List(vec![s("root"), s("parent"), Value::Int(5)])));
        r.headers.task = task_name("collect_ids");
        r.args = vec![s("previous")];
        r.kwargs = kw(vec![("i", Value::Int(50))]);
        assert_eq!(
            run(&reg, r).await,
            Ok(Value::List(vec![s("previous"), Value::List(vec![s("root"), s("parent"), Value::Int(50)])]))
        );
        assert_eq!(
            run(&reg, request("ids")).await.map_err(|e| e.to_string()),
            Err(TaskError::builtin("TypeError", "ids() missing 1 required positional argument: 'i'").to_string())
        );

        let mut r = request("return_priority");
        r.priority = 3;
        assert_eq!(run(&reg, r).await, Ok(s("Priority: 3")));

        let mut r = request("return_properties");
        r.properties.insert("app_id".into(), s("1234"));
        assert_eq!(run(&reg, r).await.unwrap().get("app_id"), Some(&s("1234")));

        let mut r = request("return_request_eta");
        assert_eq!(run(&reg, r.clone()).await, Ok(Value::Null));
        r.headers.eta = Some(PyDateTime::parse_iso("2026-03-01T12:00:00.500000+00:00").unwrap());
        assert_eq!(run(&reg, r).await, Ok(s("2026-03-01T12:00:00.500000+00:00")));
    }

    #[tokio::test]
    async fn time_limits_come_from_the_header() {
        let reg = set();
        let limits = |hard: Value, soft: Value| Value::Map(kw(vec![("time_limit", hard), ("soft_time_limit", soft)]));
        for short in ["return_request_time_limits", "task_with_declared_time_limits"] {
            assert_eq!(run(&reg, request(short)).await, Ok(limits(Value::Null, Value::Null)), "{short}");
            let mut r = request(short);
            r.headers.timelimit.hard = Some(Seconds::Int(30));
            r.headers.timelimit.soft = Some(Seconds::Float(20.5));
            assert_eq!(run(&reg, r).await, Ok(limits(Value::Int(30), Value::Float(20.5))), "{short}");
        }
    }

    #[tokio::test]
    async fn pydantic_tasks_take_and_return_dicts() {
        let reg = set();
        let data = |x: Value, y: Value| Value::Map(kw(vec![("x", x), ("y", y)]));
        let result = |n: i64| Ok(Value::Map(kw(vec![("result", Value::Int(n))])));
        for short in ["add_pydantic", "add_pydantic_string_annotations"] {
            assert_eq!(run(&reg, with_args(short, vec![data(Value::Int(2), Value::Int(3))])).await, result(5));
            let mut r = request(short);
            r.kwargs = kw(vec![("data", data(s("4"), Value::Float(4.0)))]);
            assert_eq!(run(&reg, r).await, result(8));
        }
        let (module, exc_type, message) =
            failure(run(&reg, with_args("add_pydantic", vec![Value::Map(kw(vec![("x", Value::Int(1))]))])).await);
        assert_eq!((module.as_str(), exc_type.as_str()), ("pydantic_core._pydantic_core", "ValidationError"));
        assert!(message.starts_with("1 validation error for AddParameterModel\ny\n  Field required"), "{message}");
        let (_, exc_type, _) = failure(run(&reg, with_args("add_pydantic", vec![Value::Int(1)])).await);
        assert_eq!(exc_type, "ValidationError");
    }

    /// Services that record `update_state` calls.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<(String, String, Value)>>);

    impl WorkerServices for Recorder {
        fn update_state(&self, task_id: &str, state: &str, meta: Value) -> BoxFuture<'static, Result<(), TaskError>> {
            self.0.lock().unwrap().push((task_id.to_owned(), state.to_owned(), meta));
            Box::pin(async { Ok(()) })
        }
        fn is_revoked(&self, _task_id: &str) -> bool {
            false
        }
    }

    #[tokio::test]
    async fn rejections_requeue_until_redelivered() {
        let reg = set();
        assert_eq!(run(&reg, request("reject_then_succeed")).await, Err(TaskError::reject("", true)));
        let mut r = request("reject_then_succeed");
        r.redelivered = true;
        assert_eq!(run(&reg, r).await, Ok(s("second-pass")));
        let mut r = request("reject_then_succeed");
        r.delivery_info.redelivered = Some(true);
        assert_eq!(run(&reg, r).await, Ok(s("second-pass")));

        let recorder = Arc::new(Recorder::default());
        let ctx = |redelivered: bool| {
            let mut r = request("store_success_then_reject");
            r.redelivered = redelivered;
            Ctx::new(r, recorder.clone(), CancellationToken::new(), CancellationToken::new())
        };
        assert_eq!(run_ctx(&reg, ctx(false)).await, Err(TaskError::reject("", true)));
        assert_eq!(
            recorder.0.lock().unwrap().as_slice(),
            [("task-1".to_owned(), "SUCCESS".to_owned(), s("first-pass"))]
        );
        assert_eq!(run_ctx(&reg, ctx(true)).await, Ok(s("dedup-pass")));
    }

    #[tokio::test]
    async fn sleeps_end_at_the_soft_time_limit() {
        let reg = set();
        let soft = CancellationToken::new();
        soft.cancel();
        let ctx = |r: RequestInfo| Ctx::new(r, Arc::new(Recorder::default()), soft.clone(), CancellationToken::new());
        let (module, exc_type, _) = failure(run_ctx(&reg, ctx(with_args("sleeping", vec![Value::Int(30)]))).await);
        assert_eq!((module.as_str(), exc_type.as_str()), ("billiard.exceptions", "SoftTimeLimitExceeded"));
        let numbers = Value::List(vec![Value::Int(1), Value::Int(2)]);
        let guarded = with_args("delayed_sum_with_soft_guard", vec![numbers.clone(), Value::Int(30)]);
        assert_eq!(run_ctx(&reg, ctx(guarded)).await, Ok(Value::Int(0)));
        failure(run_ctx(&reg, ctx(with_args("delayed_sum", vec![numbers.clone(), Value::Int(30)]))).await);

        assert_eq!(run(&reg, with_args("delayed_sum", vec![numbers.clone(), Value::Int(0)])).await, Ok(Value::Int(3)));
        let quick = with_args("delayed_sum_with_soft_guard", vec![numbers, Value::Float(0.01)]);
        assert_eq!(run(&reg, quick).await, Ok(Value::Int(3)));
        let mut r = with_args("sleeping", vec![Value::Float(0.01)]);
        r.kwargs = kw(vec![("anything", Value::Int(1))]);
        assert_eq!(run(&reg, r).await, Ok(Value::Null));
        let (_, exc_type, _) = failure(run(&reg, with_args("sleeping", vec![Value::Int(-1)])).await);
        assert_eq!(exc_type, "ValueError");
    }

    #[tokio::test]
    async fn small_tasks() {
        let reg = set();
        assert_eq!(run(&reg, request("celery.ping")).await, Ok(s("pong")));
        assert_eq!(run(&reg, request("print_unicode")).await, Ok(Value::Null));
        assert_eq!(run(&reg, request("replaced_with_me")).await, Ok(Value::Bool(true)));
        assert_eq!(run(&reg, request("soft_time_limit_must_exceed_time_limit")).await, Ok(Value::Null));
        assert_eq!(
            run(&reg, with_args("return_exception", vec![s("task-id")])).await,
            Ok(Value::List(vec![s("task-id"), Value::Bool(true)]))
        );
    }

    #[tokio::test]
    async fn write_to_file_appends_lines() {
        let reg = set();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.txt");
        let file = s(path.to_str().unwrap());
        for i in [1, 2] {
            let r = with_args("write_to_file_and_return_int", vec![file.clone(), Value::Int(i)]);
            assert_eq!(run(&reg, r).await, Ok(Value::Int(i)));
        }
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "1\n2\n");
        let missing = s(dir.path().join("no/such/dir/f").to_str().unwrap());
        let (_, exc_type, message) =
            failure(run(&reg, with_args("write_to_file_and_return_int", vec![missing, Value::Int(1)])).await);
        assert_eq!(exc_type, "FileNotFoundError");
        assert!(message.starts_with("[Errno 2] "), "{message}");
    }
}
