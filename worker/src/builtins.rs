//! Celery's built-in tasks that any worker of an app has, so a Python app may
//! route them to a celeriac worker: `celery.accumulate` (a group replacement's
//! results, see `runtime/replace.rs`) and `celery.backend_cleanup` (nothing to
//! clean with Redis, whose results expire by themselves). A worker registers
//! them unless its registry has tasks of those names already.

use celeriac_protocol::Value;

use crate::extract::RawArgs;
use crate::{Registry, Task, TaskError};

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
}
