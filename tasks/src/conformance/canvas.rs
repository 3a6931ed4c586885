//! The suite's tasks that build canvases from inside a task: replacing
//! themselves (`self.replace`), joining the chord they are part of
//! (`self.add_to_chord`), and "new-style" errbacks that take the failed
//! request. Each is written after its Python definition in
//! `t/integration/tasks.py`.

use std::sync::Arc;

use celeriac_protocol::{Map, Signature, Value};
use celeriac_worker::{Ctx, RawArgs, Registry, Task, TaskError};

use super::{expected_exception, rpush, task_name, with_redis, Outcome};
use crate::pyargs::{Param, PySignature};
use crate::redis_link::RedisLink;

/// `<task>.s(*args)` of the suite's module.
fn s(short: &str, args: Vec<Value>) -> Signature {
    let mut sig = Signature::new(task_name(short));
    sig.args = args;
    sig
}

/// `<task>.si(*args)`.
fn si(short: &str, args: Vec<Value>) -> Signature {
    let mut sig = s(short, args);
    sig.immutable = true;
    sig
}

fn canvas(kind: &str, key: &str, members: Vec<Signature>) -> Signature {
    let mut sig = Signature::new(format!("celery.{kind}"));
    sig.subtask_type = Some(kind.into());
    sig.kwargs.insert(key.into(), Value::List(members.iter().map(Signature::to_value).collect()));
    sig
}

fn chain(steps: Vec<Signature>) -> Signature {
    canvas("chain", "tasks", steps)
}

fn group(members: Vec<Signature>) -> Signature {
    canvas("group", "tasks", members)
}

/// `chord(header, body)`.
fn chord(header: Vec<Signature>, body: Signature) -> Signature {
    let mut sig = Signature::new("celery.chord");
    sig.subtask_type = Some("chord".into());
    sig.kwargs.insert("kwargs".into(), Value::Map(Map::new()));
    sig.kwargs.insert("header".into(), group(header).to_value());
    sig.kwargs.insert("body".into(), body.to_value());
    sig
}

/// Appends `link` to the option `key` of `sig` (`link`, `link_error`).
fn linked(mut sig: Signature, key: &str, link: Signature) -> Signature {
    sig.options.insert(key.into(), Value::List(vec![link.to_value()]));
    sig
}

const XY: PySignature = PySignature::new("add_replaced", &[Param::required("x"), Param::required("y")]);

async fn add_replaced(ctx: Ctx, RawArgs(args, kwargs): RawArgs) -> Outcome {
    let mut b = XY.bind(args, kwargs)?;
    let (x, y) = (b.take_or("x", Value::Null), b.take_or("y", Value::Null));
    Err(ctx.replace(s("add", vec![x, y])))
}

async fn add_replaced_with_chain(ctx: Ctx, RawArgs(args, kwargs): RawArgs) -> Outcome {
    let mut b = XY.bind(args, kwargs)?;
    let (x, y) = (b.take_or("x", Value::Null), b.take_or("y", Value::Null));
    Err(ctx.replace(chain(vec![s("add", vec![x, y]), s("identity", vec![])])))
}

const NESTING: PySignature =
    PySignature::new("record_replaced_task_nesting", &[Param::required("replacements"), Param::optional("nesting")]);

async fn record_replaced_task_nesting(ctx: Ctx, RawArgs(args, kwargs): RawArgs) -> Outcome {
    let mut b = NESTING.bind(args, kwargs)?;
    let replacements = b.take_or("replacements", Value::Int(0));
    let mut nesting = match b.take_or("nesting", Value::Null) {
        Value::List(items) => items,
        _ => Vec::new(),
    };
    nesting.push(Value::Int(ctx.replaced_task_nesting()));
    let left = replacements.as_i64().unwrap_or(0);
    if left > 0 {
        let mut next = s("record_replaced_task_nesting", vec![Value::Int(left - 1), Value::List(nesting)]);
        if let Some(reply_to) = ctx.properties().get("reply_to") {
            next.options.insert("reply_to".into(), reply_to.clone());
        }
        return Err(ctx.replace(next));
    }
    Ok(Value::List(nesting))
}

const WITH_LINK_MSG: PySignature =
    PySignature::new("replace_with_chain", &[Param::keyword_optional("link_msg")]).with_var_args();

/// `redis_echo.s()`, or `redis_echo.si(link_msg)` when one is given.
fn echo_link(link_msg: Value) -> Signature {
    match link_msg {
        Value::Null => s("redis_echo", vec![]),
        msg => si("redis_echo", vec![msg]),
    }
}

async fn replace_with_chain(ctx: Ctx, RawArgs(args, kwargs): RawArgs) -> Outcome {
    let mut b = WITH_LINK_MSG.bind(args, kwargs)?;
    let link = echo_link(b.take_or("link_msg", Value::Null));
    let c = chain(vec![s("identity", std::mem::take(&mut b.var_args)), s("identity", vec![])]);
    Err(ctx.replace(linked(c, "link", link)))
}

async fn replace_with_chain_which_raises(ctx: Ctx, RawArgs(args, kwargs): RawArgs) -> Outcome {
    let mut b = WITH_LINK_MSG.bind(args, kwargs)?;
    let link = echo_link(b.take_or("link_msg", Value::Null));
    let c = chain(vec![s("identity", std::mem::take(&mut b.var_args)), s("raise_error", vec![])]);
    Err(ctx.replace(linked(c, "link_error", link)))
}

async fn replace_with_empty_chain(ctx: Ctx) -> Outcome {
    Err(ctx.replace(chain(Vec::new())))
}

async fn replace_with_chain_which_contains_a_group(ctx: Ctx) -> Outcome {
    let one = Value::Int(1);
    Err(ctx.replace(chain(vec![
        s("add", vec![one.clone(), Value::Int(2)]),
        group(vec![s("add", vec![one.clone()]), s("add", vec![one])]),
    ])))
}

const NUMS_VAL: PySignature = PySignature::new("add_to_all", &[Param::required("nums"), Param::required("val")]);

fn nums_val(args: Vec<Value>, kwargs: Map) -> Result<(Vec<Value>, Value), TaskError> {
    let mut b = NUMS_VAL.bind(args, kwargs)?;
    let nums = match b.take_or("nums", Value::Null) {
        Value::List(items) => items,
        other => {
            return Err(TaskError::builtin("TypeError", format!("'{}' object is not iterable", other.type_name())))
        }
    };
    Ok((nums, b.take_or("val", Value::Null)))
}

async fn add_to_all(ctx: Ctx, RawArgs(args, kwargs): RawArgs) -> Outcome {
    let (nums, val) = nums_val(args, kwargs)?;
    Err(ctx.replace(group(nums.into_iter().map(|n| s("add", vec![n, val.clone()])).collect())))
}

async fn add_to_all_to_chord(ctx: Ctx, RawArgs(args, kwargs): RawArgs) -> Outcome {
    let (nums, val) = nums_val(args, kwargs)?;
    for num in nums {
        ctx.add_to_chord(s("add", vec![num, val.clone()])).await?;
    }
    Ok(Value::Int(0))
}

async fn add_chord_to_chord(ctx: Ctx, RawArgs(args, kwargs): RawArgs) -> Outcome {
    let (nums, val) = nums_val(args, kwargs)?;
    let header = nums.into_iter().map(|n| s("add", vec![n, val.clone()])).collect();
    ctx.add_to_chord(chord(header, s("tsum", vec![]))).await?;
    Ok(Value::Int(0))
}

const STATE: PySignature = PySignature::new("second_order_replace", &[Param::optional("state")]);

async fn second_order_replace1(redis: Arc<RedisLink>, ctx: Ctx, RawArgs(args, kwargs): RawArgs) -> Outcome {
    let mut b = STATE.bind(args, kwargs)?;
    let key = Value::Str("redis-echo".into());
    if !b.take_or("state", Value::Bool(false)).is_truthy() {
        rpush(&redis, &key, &Value::Str("In A".into())).await?;
        let mut again = si("second_order_replace1", vec![]);
        again.kwargs.insert("state".into(), Value::Bool(true));
        return Err(ctx.replace(chain(vec![s("second_order_replace2", vec![]), again])));
    }
    rpush(&redis, &key, &Value::Str("Out A".into())).await?;
    Ok(Value::Null)
}

async fn second_order_replace2(redis: Arc<RedisLink>, ctx: Ctx, RawArgs(args, kwargs): RawArgs) -> Outcome {
    let mut b = STATE.bind(args, kwargs)?;
    let key = Value::Str("redis-echo".into());
    if !b.take_or("state", Value::Bool(false)).is_truthy() {
        rpush(&redis, &key, &Value::Str("In B".into())).await?;
        let mut again = si("second_order_replace2", vec![]);
        again.kwargs.insert("state".into(), Value::Bool(true));
        return Err(ctx.replace(chain(vec![s("redis_echo", vec![Value::Str("In/Out C".into())]), again])));
    }
    rpush(&redis, &key, &Value::Str("Out B".into())).await?;
    Ok(Value::Null)
}

async fn fail_replaced(ctx: Ctx, RawArgs(args, _kwargs): RawArgs) -> Outcome {
    Err(ctx.replace(si("fail", args)))
}

const NEW_STYLE: PySignature =
    PySignature::new("errback_new_style", &[Param::required("request"), Param::required("exc"), Param::required("tb")]);

/// `errback_new_style(request, exc, tb)`: called in the failing worker with
/// the failed request; counts its id.
async fn errback_new_style(redis: Arc<RedisLink>, ctx: Ctx, RawArgs(args, kwargs): RawArgs) -> Outcome {
    // The request is the context; the call's own arguments are (exc, tb).
    let mut with_request = vec![Value::Null];
    with_request.extend(args);
    NEW_STYLE.bind(with_request, kwargs)?;
    let key = Value::Str(ctx.id().to_owned());
    super::incr(&redis, &key).await?;
    Ok(key)
}

const NEW_STYLE_WITH_ARGS: PySignature = PySignature::new(
    "errback_new_style_with_args",
    &[Param::required("request"), Param::required("exc"), Param::required("tb"), Param::required("label")],
);

/// `errback_new_style_with_args(request, exc, tb, label)`: echoes the label
/// under the failed request's id.
async fn errback_new_style_with_args(redis: Arc<RedisLink>, ctx: Ctx, RawArgs(args, kwargs): RawArgs) -> Outcome {
    let mut with_request = vec![Value::Null];
    with_request.extend(args);
    let mut b = NEW_STYLE_WITH_ARGS.bind(with_request, kwargs)?;
    let label = b.take_or("label", Value::Null);
    rpush(&redis, &Value::Str(ctx.id().to_owned()), &label).await?;
    Ok(Value::Null)
}

fn frozen(mut sig: Signature) -> (Signature, String) {
    let id = uuid::Uuid::new_v4().to_string();
    sig.options.insert("task_id".into(), Value::Str(id.clone()));
    (sig, id)
}

/// `(id, parent)` of a result tuple, as Celery's `AsyncResult.as_tuple()`.
fn tuple(id: &str, parent: Value, children: Value) -> Value {
    Value::List(vec![Value::List(vec![Value::Str(id.to_owned()), parent]), children])
}

/// `build_chain_inside_task`: applies `add.s(1, 1) | add.s(2) | group(add.s(3),
/// add.s(4)) | add.s(5)` and returns its result, which Celery serializes as
/// the result tuple with its parents.
async fn build_chain_inside_task(ctx: Ctx) -> Outcome {
    let one = Value::Int(1);
    let (a, a_id) = frozen(s("add", vec![one.clone(), one]));
    let (b, b_id) = frozen(s("add", vec![Value::Int(2)]));
    let (m1, m1_id) = frozen(s("add", vec![Value::Int(3)]));
    let (m2, m2_id) = frozen(s("add", vec![Value::Int(4)]));
    let (g, g_id) = frozen(group(vec![m1, m2]));
    let (c, c_id) = frozen(s("add", vec![Value::Int(5)]));
    ctx.apply(chain(vec![a, b, g, c])).await?;
    let members = Value::List(vec![tuple(&m1_id, Value::Null, Value::Null), tuple(&m2_id, Value::Null, Value::Null)]);
    let first = Value::List(vec![Value::Str(a_id), Value::Null]);
    let second = Value::List(vec![Value::Str(b_id), first]);
    let header = Value::List(vec![Value::List(vec![Value::Str(g_id), second]), members]);
    Ok(tuple(&c_id, header, Value::Null))
}

/// Registers the tasks above.
pub(super) fn register(r: &mut Registry, redis: &Arc<RedisLink>) {
    let _ = expected_exception;
    r.add(Task::new(task_name("add_replaced"), add_replaced));
    r.add(Task::new(task_name("add_replaced_with_chain"), add_replaced_with_chain));
    r.add(Task::new(task_name("record_replaced_task_nesting"), record_replaced_task_nesting));
    r.add(Task::new(task_name("replace_with_chain"), replace_with_chain));
    r.add(Task::new(task_name("replace_with_chain_which_raises"), replace_with_chain_which_raises));
    r.add(Task::new(task_name("replace_with_empty_chain"), replace_with_empty_chain));
    r.add(Task::new(task_name("replace_with_chain_which_contains_a_group"), replace_with_chain_which_contains_a_group));
    r.add(Task::new(task_name("add_to_all"), add_to_all));
    r.add(Task::new(task_name("add_to_all_to_chord"), add_to_all_to_chord));
    r.add(Task::new(task_name("add_chord_to_chord"), add_chord_to_chord));
    r.add(with_redis(task_name("second_order_replace1"), redis, second_order_replace1));
    r.add(with_redis(task_name("second_order_replace2"), redis, second_order_replace2));
    r.add(Task::new(task_name("fail_replaced"), fail_replaced));
    r.add(Task::new(task_name("build_chain_inside_task"), build_chain_inside_task));
    r.add(with_redis(task_name("errback_new_style"), redis, errback_new_style).errback_takes_request(true));
    r.add(
        with_redis(task_name("errback_new_style_with_args"), redis, errback_new_style_with_args)
            .errback_takes_request(true),
    );
}
