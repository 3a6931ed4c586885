//! Python's operators on task values: `a + b`, `a * b`, `sum(xs)`, truth,
//! iteration and `time.sleep`, with Python's results (an `int` stays an `int`,
//! lists and strings concatenate and repeat) and Python's `TypeError` texts
//! for what Python refuses, so a task written in Rust answers a Python caller
//! as the Python task would.
//!
//! Integers are exact up to 128 bits; beyond that the result is an
//! `OverflowError` (Python's integers are unbounded).

use std::time::Duration;

use celeriac_protocol::Value;
use celeriac_worker::{Ctx, TaskError};

/// A number as Python's arithmetic sees it (`bool` is an `int`).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Num {
    Int(i128),
    Float(f64),
}

fn num(v: &Value) -> Option<Num> {
    match v {
        Value::Bool(b) => Some(Num::Int(i128::from(*b))),
        Value::Int(i) => Some(Num::Int(i128::from(*i))),
        Value::BigInt(b) => b.to_i128().map(Num::Int),
        Value::Float(f) => Some(Num::Float(*f)),
        _ => None,
    }
}

fn as_float(n: Num) -> f64 {
    match n {
        Num::Int(i) => i as f64,
        Num::Float(f) => f,
    }
}

fn overflow() -> TaskError {
    TaskError::builtin("OverflowError", "integer result beyond 128 bits (celeriac's integers stop there)")
}

fn arith(a: Num, b: Num, op: char) -> Result<Value, TaskError> {
    match (a, b) {
        (Num::Int(x), Num::Int(y)) => {
            let r = if op == '+' { x.checked_add(y) } else { x.checked_mul(y) };
            r.map(Value::from).ok_or_else(overflow)
        }
        _ => {
            let (x, y) = (as_float(a), as_float(b));
            Ok(Value::Float(if op == '+' { x + y } else { x * y }))
        }
    }
}

/// Python's type name for messages (`NoneType`, where [`Value::type_name`] says `None`).
pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "NoneType",
        other => other.type_name(),
    }
}

fn unsupported(op: char, a: &Value, b: &Value) -> TaskError {
    TaskError::builtin(
        "TypeError",
        format!("unsupported operand type(s) for {op}: '{}' and '{}'", type_name(a), type_name(b)),
    )
}

/// `a + b`: numbers add (`int` + `float` is a `float`); `str`, `bytes` and
/// lists concatenate with their own kind.
pub fn add(a: &Value, b: &Value) -> Result<Value, TaskError> {
    if let (Some(x), Some(y)) = (num(a), num(b)) {
        return arith(x, y, '+');
    }
    match (a, b) {
        (Value::Str(x), Value::Str(y)) => Ok(Value::Str(format!("{x}{y}"))),
        (Value::Bytes(x), Value::Bytes(y)) => Ok(Value::Bytes([x.as_slice(), y].concat())),
        (Value::List(x), Value::List(y)) => Ok(Value::List([x.as_slice(), y].concat())),
        (Value::Str(_), other) => Err(TaskError::builtin(
            "TypeError",
            format!("can only concatenate str (not \"{}\") to str", type_name(other)),
        )),
        (Value::List(_), other) => Err(TaskError::builtin(
            "TypeError",
            format!("can only concatenate list (not \"{}\") to list", type_name(other)),
        )),
        (Value::Bytes(_), other) => {
            Err(TaskError::builtin("TypeError", format!("can't concat {} to bytes", type_name(other))))
        }
        _ => Err(unsupported('+', a, b)),
    }
}

/// Most elements a repetition may produce (Python would run out of memory).
const MAX_REPEAT: usize = 1 << 26;

fn repeat<T: Clone>(items: &[T], times: i128) -> Result<Vec<T>, TaskError> {
    let n = usize::try_from(times.max(0)).unwrap_or(usize::MAX);
    if items.len().saturating_mul(n) > MAX_REPEAT {
        return Err(TaskError::builtin("MemoryError", "repetition too large"));
    }
    let mut out = Vec::with_capacity(items.len() * n);
    for _ in 0..n {
        out.extend_from_slice(items);
    }
    Ok(out)
}

/// `a * b`: numbers multiply; a `str`, `bytes` or list times an `int` repeats.
pub fn mul(a: &Value, b: &Value) -> Result<Value, TaskError> {
    if let (Some(x), Some(y)) = (num(a), num(b)) {
        return arith(x, y, '*');
    }
    let (seq, times) = match (a, b) {
        (Value::Str(_) | Value::Bytes(_) | Value::List(_), n) => (a, n),
        (n, Value::Str(_) | Value::Bytes(_) | Value::List(_)) => (b, n),
        _ => return Err(unsupported('*', a, b)),
    };
    let count = match num(times) {
        Some(Num::Int(n)) => n,
        _ => {
            return Err(TaskError::builtin(
                "TypeError",
                format!("can't multiply sequence by non-int of type '{}'", type_name(times)),
            ))
        }
    };
    Ok(match seq {
        Value::Str(s) => {
            let chars: Vec<char> = s.chars().collect();
            Value::Str(repeat(&chars, count)?.into_iter().collect())
        }
        Value::Bytes(bytes) => Value::Bytes(repeat(bytes, count)?),
        Value::List(items) => Value::List(repeat(items, count)?),
        _ => return Err(unsupported('*', a, b)),
    })
}

/// What `for item in v` yields: a list's items, a dict's keys, a string's
/// characters, a `bytes`' integers; other values are not iterable.
pub fn iterate(v: &Value) -> Result<Vec<Value>, TaskError> {
    match v {
        Value::List(items) => Ok(items.clone()),
        Value::Map(map) => Ok(map.keys().map(|k| Value::Str(k.clone())).collect()),
        Value::Str(s) => Ok(s.chars().map(|c| Value::Str(c.to_string())).collect()),
        Value::Bytes(b) => Ok(b.iter().map(|&x| Value::Int(i64::from(x))).collect()),
        other => Err(TaskError::builtin("TypeError", format!("'{}' object is not iterable", type_name(other)))),
    }
}

/// Whether Python's `isinstance(v, collections.abc.Iterable)` holds.
pub fn is_iterable(v: &Value) -> bool {
    matches!(v, Value::List(_) | Value::Map(_) | Value::Str(_) | Value::Bytes(_))
}

/// `sum(v)`: the items of `v` added to `0` in order.
pub fn sum(v: &Value) -> Result<Value, TaskError> {
    iterate(v)?.iter().try_fold(Value::Int(0), |acc, item| add(&acc, item))
}

/// Python's truth: `None`, `False`, zero and empty containers are false.
pub fn truthy(v: &Value) -> bool {
    v.is_truthy()
}

/// A number of seconds as `time.sleep` takes it: an `int` or `float`, not
/// negative.
pub fn seconds(v: &Value) -> Result<Duration, TaskError> {
    let secs = match num(v) {
        Some(n) => as_float(n),
        None => {
            return Err(TaskError::builtin(
                "TypeError",
                format!("'{}' object cannot be interpreted as an integer", type_name(v)),
            ))
        }
    };
    if secs.is_nan() || secs < 0.0 {
        return Err(TaskError::builtin("ValueError", "sleep length must be non-negative"));
    }
    Duration::try_from_secs_f64(secs).map_err(|_| TaskError::builtin("OverflowError", "sleep length is too large"))
}

/// `time.sleep(secs)` inside a worker: sleeps, unless the soft time limit
/// passes first, in which case it fails with `SoftTimeLimitExceeded` as a
/// Python task's sleep is interrupted.
pub async fn sleep(ctx: &Ctx, secs: &Value) -> Result<(), TaskError> {
    let duration = seconds(secs)?;
    tokio::select! {
        _ = tokio::time::sleep(duration) => Ok(()),
        _ = ctx.soft_time_limit() => Err(ctx.soft_time_limit_error()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> Value {
        Value::Str(text.into())
    }

    fn type_error(result: Result<Value, TaskError>) -> String {
        match result {
            Err(TaskError::Failure { exc_type, message, .. }) if exc_type == "TypeError" => message,
            other => panic!("expected a TypeError, got {other:?}"),
        }
    }

    #[test]
    fn addition() {
        assert_eq!(add(&Value::Int(2), &Value::Int(3)), Ok(Value::Int(5)));
        assert_eq!(add(&Value::Int(2), &Value::Float(0.5)), Ok(Value::Float(2.5)));
        assert_eq!(add(&Value::Bool(true), &Value::Int(1)), Ok(Value::Int(2)));
        assert_eq!(add(&Value::Int(i64::MAX), &Value::Int(1)), Ok(Value::from(i128::from(i64::MAX) + 1)));
        assert_eq!(add(&s("a"), &s("b")), Ok(s("ab")));
        assert_eq!(add(&Value::List(vec![Value::Int(1)]), &Value::List(vec![])), Ok(Value::List(vec![Value::Int(1)])));
        assert_eq!(type_error(add(&Value::Int(1), &s("a"))), "unsupported operand type(s) for +: 'int' and 'str'");
        assert_eq!(type_error(add(&s("a"), &Value::Int(1))), "can only concatenate str (not \"int\") to str");
        assert_eq!(
            type_error(add(&Value::Null, &Value::Int(1))),
            "unsupported operand type(s) for +: 'NoneType' and 'int'"
        );
    }

    #[test]
    fn multiplication() {
        assert_eq!(mul(&Value::Int(6), &Value::Int(7)), Ok(Value::Int(42)));
        assert_eq!(mul(&s("ab"), &Value::Int(2)), Ok(s("abab")));
        assert_eq!(mul(&Value::Int(-1), &s("ab")), Ok(s("")));
        assert_eq!(type_error(mul(&s("a"), &s("b"))), "can't multiply sequence by non-int of type 'str'");
        assert_eq!(
            type_error(mul(&Value::Null, &Value::Int(1))),
            "unsupported operand type(s) for *: 'NoneType' and 'int'"
        );
    }

    #[test]
    fn sums_and_truth() {
        let nums = Value::List(vec![Value::Int(1), Value::Int(2), Value::Float(0.5)]);
        assert_eq!(sum(&nums), Ok(Value::Float(3.5)));
        assert_eq!(sum(&Value::List(vec![])), Ok(Value::Int(0)));
        assert_eq!(sum(&Value::Bytes(vec![1, 2])), Ok(Value::Int(3)));
        assert_eq!(type_error(sum(&Value::Int(3))), "'int' object is not iterable");
        assert_eq!(type_error(sum(&s("ab"))), "unsupported operand type(s) for +: 'int' and 'str'");
        assert!(!truthy(&Value::Null) && !truthy(&Value::Int(0)) && !truthy(&s("")) && truthy(&Value::Int(2)));
    }

    #[test]
    fn sleep_lengths() {
        assert_eq!(seconds(&Value::Float(0.25)), Ok(Duration::from_millis(250)));
        assert!(
            matches!(seconds(&Value::Int(-1)), Err(TaskError::Failure { exc_type, .. }) if exc_type == "ValueError")
        );
        assert!(matches!(seconds(&s("1")), Err(TaskError::Failure { exc_type, .. }) if exc_type == "TypeError"));
    }
}
