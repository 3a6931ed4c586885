//! The task-writing API: `State<T>` (registered once, taken by any task of
//! the registry, refused at startup when missing), `max_retries(n)` /
//! `retry_forever()`, and `?` on I/O errors, compared with the exception
//! Python's own `OSError` gives for every errno and with what Celery's
//! result backend rebuilds from celeriac's record.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed assertion

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use celeriac_protocol::{json, Map, Value};
use celeriac_worker::{Args, Ctx, Invocation, MissingState, Registry, RequestInfo, State, Task, TaskError};

/// A shared resource: a counter standing in for a pool.
#[derive(Default)]
struct Pool {
    calls: AtomicU32,
    name: String,
}

async fn lease(State(pool): State<Arc<Pool>>, Args((n,)): Args<(u32,)>) -> Result<String, TaskError> {
    let before = pool.calls.fetch_add(n, Ordering::SeqCst);
    Ok(format!("{} {}", pool.name, before + n))
}

fn label(State(prefix): State<&'static str>, ctx: Ctx) -> Result<String, TaskError> {
    Ok(format!("{prefix}:{}", ctx.id()))
}

fn invocation(task: &str, args: Vec<Value>) -> Invocation {
    let mut request = RequestInfo::default();
    request.headers.id = "t-1".into();
    request.headers.task = task.into();
    request.args = args;
    Invocation::new(Ctx::detached(request))
}

async fn run(registry: &Registry, task: &str, args: Vec<Value>) -> Result<Value, TaskError> {
    registry.get(task).unwrap().handler().call(invocation(task, args)).await
}

#[tokio::test]
async fn state_is_shared_by_the_tasks_of_a_registry_whenever_it_is_added() {
    let pool = Arc::new(Pool { name: "db".into(), ..Pool::default() });
    // A state added before the task, and one added after.
    let registry = Registry::new()
        .with_state(pool.clone())
        .with(Task::new("tasks.lease", lease))
        .with(Task::blocking("tasks.label", label))
        .with_state("run");
    registry.check_states().unwrap();
    assert_eq!(registry.states().len(), 2);
    assert_eq!(run(&registry, "tasks.lease", vec![Value::Int(2)]).await, Ok("db 2".into()));
    assert_eq!(run(&registry, "tasks.lease", vec![Value::Int(3)]).await, Ok("db 5".into()));
    assert_eq!(pool.calls.load(Ordering::SeqCst), 5, "every call used the one registered value");
    assert_eq!(run(&registry, "tasks.label", vec![]).await, Ok("run:t-1".into()));

    // A task set's state travels with its tasks when registries are merged.
    let mut worker = Registry::new();
    worker.merge(Registry::new().with(Task::blocking("tasks.label", label)).with_state("set-a"));
    worker.merge(Registry::new().with(Task::new("tasks.lease", lease)).with_state(pool.clone()));
    worker.check_states().unwrap();
    assert_eq!(run(&worker, "tasks.label", vec![]).await, Ok("set-a:t-1".into()));
    assert_eq!(run(&worker, "tasks.lease", vec![Value::Int(1)]).await, Ok("db 6".into()));
    // One value per type: a later one replaces it.
    worker.add_state("set-b");
    assert_eq!(run(&worker, "tasks.label", vec![]).await, Ok("set-b:t-1".into()));
}

#[tokio::test]
async fn a_missing_state_is_a_startup_error_and_a_clear_failure() {
    let registry =
        Registry::new().with(Task::new("tasks.echo", |Args(v): Args<Vec<i64>>| async move { Ok::<_, TaskError>(v) }));
    registry.check_states().unwrap();
    let registry = registry.with(Task::new("tasks.lease", lease)).with_state("not a pool");
    let err = registry.check_states().unwrap_err();
    assert_eq!(err, MissingState { task: "tasks.lease".into(), type_name: std::any::type_name::<Arc<Pool>>() });
    let text = err.to_string();
    assert!(text.contains("tasks.lease") && text.contains("Pool") && text.contains("with_state"), "{text}");
    assert_eq!(registry.get("tasks.lease").unwrap().state_needs().len(), 1);

    // Run anyway (a registry nobody checked): the task fails, saying why.
    match run(&registry, "tasks.lease", vec![Value::Int(1)]).await {
        Err(TaskError::Failure { exc_type, message, .. }) => {
            assert_eq!(exc_type, "RuntimeError");
            assert!(message.contains("State<") && message.contains("with_state"), "{message}");
        }
        other => panic!("expected a RuntimeError, got {other:?}"),
    }
}

#[test]
fn max_retries_and_retry_forever() {
    async fn t() -> Result<(), TaskError> {
        Ok(())
    }
    assert_eq!(Task::new("t", t).options().max_retries, Some(3), "Celery's default");
    assert_eq!(Task::new("t", t).max_retries(7).options().max_retries, Some(7));
    assert_eq!(Task::new("t", t).max_retries(0).options().max_retries, Some(0));
    assert_eq!(Task::new("t", t).max_retries(7).retry_forever().options().max_retries, None);
    assert_eq!(Task::new("t", t).retry_forever().max_retries(2).options().max_retries, Some(2));
}

/// What Python makes of celeriac's record of `?` on an I/O error with each
/// errno: Celery's backend rebuilds the exception from the stored
/// `{exc_type, exc_message, exc_module}`, and it must be what
/// `OSError(errno, os.strerror(errno))` is in Python: the same class, args,
/// `errno`, `strerror` and `str()`.
const CHECK: &str = r#"
import json, os, sys
from celery import Celery
backend = Celery("check", backend="cache+memory://").backend
bad = []
records = json.load(sys.stdin)
for errno, record in records:
    ours = backend.exception_to_python(record)
    theirs = OSError(errno, os.strerror(errno))
    got = (type(ours).__name__, list(ours.args), getattr(ours, "errno", None), getattr(ours, "strerror", None), str(ours))
    want = (type(theirs).__name__, list(theirs.args), theirs.errno, theirs.strerror, str(theirs))
    if got != want:
        bad.append({"errno": errno, "celeriac": got, "python": want})
print(json.dumps({"checked": len(records), "bad": bad}))
"#;

#[test]
fn io_errors_are_the_oserror_python_raises_for_every_errno() {
    let Some(python) = celeriac_tests::python_peer() else { return };
    let records: Vec<Value> = (1..=133)
        .map(|errno| {
            fn open(errno: i32) -> Result<(), TaskError> {
                Err(std::io::Error::from_raw_os_error(errno))?
            }
            let e = open(errno).unwrap_err();
            Value::List(vec![Value::Int(i64::from(errno)), e.exception_value()])
        })
        .collect();
    let mut child = Command::new(python)
        .args(["-c", CHECK])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(json::to_string(&Value::List(records)).unwrap().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the Python check failed");
    let report = json::from_str(std::str::from_utf8(&out.stdout).unwrap()).unwrap();
    let report = report.as_map().unwrap();
    assert_eq!(report.get("checked"), Some(&Value::Int(133)));
    assert_eq!(report.get("bad"), Some(&Value::List(vec![])), "celeriac and Python differ");
}

#[test]
fn the_facade_exceptions_are_stored_as_celery_stores_them() {
    let e: TaskError = std::io::Error::from_raw_os_error(2).into();
    let mut expected = Map::new();
    expected.insert("exc_type".into(), "FileNotFoundError".into());
    expected.insert("exc_message".into(), Value::List(vec![Value::Int(2), "No such file or directory".into()]));
    expected.insert("exc_module".into(), "builtins".into());
    assert_eq!(e.exception_value(), Value::Map(expected));
}
