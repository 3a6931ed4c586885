//! Canvas signatures: the dicts Celery puts in `link`, `link_error`, `chain` and
//! `chord`, and that describe groups, chains and chords themselves.
//!
//! A signature is `{"task", "args", "kwargs", "options", "subtask_type",
//! "immutable"}` plus whatever a canvas type adds (a chord's `chord_size`, ...).
//! Unknown keys are kept and written back after the known ones, so a signature
//! passes through a Rust worker unchanged.

use crate::error::ProtocolError;
use crate::value::{Map, Value};

/// A Celery signature (`celery.canvas.Signature` as a dict).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Signature {
    /// The task name; `celery.group`, `celery.chain` or `celery.chord` for canvas types.
    pub task: String,
    /// Positional arguments; a parent's result is prepended unless `immutable`.
    pub args: Vec<Value>,
    /// Keyword arguments (for canvas types: `tasks`, or `header`/`body`).
    pub kwargs: Map,
    /// Execution options (`task_id`, `reply_to`, `group_id`, `queue`, `link`, ...).
    pub options: Map,
    /// `None` for a plain task, else `"group"`, `"chain"`, `"chord"`, ...
    pub subtask_type: Option<String>,
    /// When true, the parent's result is not prepended to `args`.
    pub immutable: bool,
    /// Keys beyond the six above, in order.
    pub extra: Map,
}

/// What kind of canvas element a signature is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignatureKind {
    /// A single task.
    Task,
    /// `group(...)`: `kwargs.tasks` run in parallel.
    Group,
    /// `chain(...)`: `kwargs.tasks` run in order.
    Chain,
    /// `chord(header, body)`.
    Chord,
    /// Another `subtask_type` (e.g. `xmap`, `chunks`).
    Other,
}

fn sig_err(reason: impl Into<String>) -> ProtocolError {
    ProtocolError::Signature(reason.into())
}

impl Signature {
    /// A plain task signature.
    pub fn new(task: impl Into<String>) -> Signature {
        Signature { task: task.into(), ..Signature::default() }
    }

    /// Reads a signature dict.
    pub fn from_value(value: &Value) -> Result<Signature, ProtocolError> {
        let Value::Map(map) = value else {
            return Err(sig_err(format!("expected a dict, got a {}", value.type_name())));
        };
        let mut sig = Signature::default();
        for (key, item) in map {
            match key.as_str() {
                "task" => {
                    sig.task = match item {
                        Value::Str(s) => s.clone(),
                        // Canvas types built by hand sometimes have task=None.
                        Value::Null => String::new(),
                        other => return Err(sig_err(format!("task is a {}", other.type_name()))),
                    }
                }
                "args" => {
                    sig.args = match item {
                        Value::List(l) => l.clone(),
                        Value::Null => Vec::new(),
                        other => return Err(sig_err(format!("args is a {}", other.type_name()))),
                    }
                }
                "kwargs" => sig.kwargs = as_map(item, "kwargs")?,
                "options" => sig.options = as_map(item, "options")?,
                "subtask_type" => {
                    sig.subtask_type = match item {
                        Value::Str(s) => Some(s.clone()),
                        Value::Null => None,
                        other => return Err(sig_err(format!("subtask_type is a {}", other.type_name()))),
                    }
                }
                "immutable" => {
                    sig.immutable = match item {
                        Value::Bool(b) => *b,
                        Value::Null => false,
                        other => return Err(sig_err(format!("immutable is a {}", other.type_name()))),
                    }
                }
                _ => {
                    sig.extra.insert(key.clone(), item.clone());
                }
            }
        }
        Ok(sig)
    }

    /// Writes the signature as Celery's dict, known keys first in Celery's order.
    pub fn to_value(&self) -> Value {
        let mut map = Map::with_capacity(6 + self.extra.len());
        map.insert("task".into(), Value::Str(self.task.clone()));
        map.insert("args".into(), Value::List(self.args.clone()));
        map.insert("kwargs".into(), Value::Map(self.kwargs.clone()));
        map.insert("options".into(), Value::Map(self.options.clone()));
        map.insert("subtask_type".into(), self.subtask_type.clone().into());
        map.insert("immutable".into(), Value::Bool(self.immutable));
        for (k, v) in &self.extra {
            map.insert(k.clone(), v.clone());
        }
        Value::Map(map)
    }

    /// What kind of canvas element this is.
    pub fn kind(&self) -> SignatureKind {
        match self.subtask_type.as_deref() {
            None => SignatureKind::Task,
            Some("group") => SignatureKind::Group,
            Some("chain") => SignatureKind::Chain,
            Some("chord") => SignatureKind::Chord,
            Some(_) => SignatureKind::Other,
        }
    }

    /// The task id assigned in advance (`options.task_id`), if any.
    pub fn task_id(&self) -> Option<&str> {
        self.options.get("task_id").and_then(Value::as_str)
    }

    /// The members of a group or chain (`kwargs.tasks`), read as signatures.
    pub fn tasks(&self) -> Result<Vec<Signature>, ProtocolError> {
        match self.kwargs.get("tasks") {
            Some(Value::List(items)) => items.iter().map(Signature::from_value).collect(),
            Some(other) => Err(sig_err(format!("kwargs.tasks is a {}", other.type_name()))),
            None => Err(sig_err("a group or chain has kwargs.tasks")),
        }
    }

    /// The arguments to send when a parent's `result` is passed on: the result
    /// prepended to `args`, or `args` unchanged for an immutable signature.
    pub fn args_with_parent_result(&self, result: &Value) -> Vec<Value> {
        if self.immutable {
            self.args.clone()
        } else {
            let mut args = Vec::with_capacity(self.args.len() + 1);
            args.push(result.clone());
            args.extend(self.args.iter().cloned());
            args
        }
    }
}

fn as_map(value: &Value, what: &str) -> Result<Map, ProtocolError> {
    match value {
        Value::Map(m) => Ok(m.clone()),
        Value::Null => Ok(Map::new()),
        other => Err(sig_err(format!("{what} is a {}", other.type_name()))),
    }
}

/// Reads an optional list of signatures (`callbacks`, `errbacks`, `chain`).
pub(crate) fn list_from_value(value: Option<&Value>, what: &str) -> Result<Option<Vec<Signature>>, ProtocolError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::List(items)) => items
            .iter()
            .map(Signature::from_value)
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
            .map_err(|e| ProtocolError::Body(format!("{what}: {e}"))),
        Some(other) => {
            Err(ProtocolError::Body(format!("{what} is a {}, expected a list of signatures", other.type_name())))
        }
    }
}

/// Writes an optional list of signatures.
pub(crate) fn list_to_value(list: &Option<Vec<Signature>>) -> Value {
    match list {
        None => Value::Null,
        Some(items) => Value::List(items.iter().map(Signature::to_value).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json;

    #[test]
    fn chain_step_round_trips() {
        let text = r#"{"task": "tasks.add", "args": [100], "kwargs": {}, "options": {"task_id": "a8b40867-33c8-4dee-93ce-fee7f40acdb5", "reply_to": "83bd362c-ae4e-3ebe-9c6b-e8bb164e121e"}, "subtask_type": null, "immutable": false}"#;
        let sig = Signature::from_value(&json::from_str(text).unwrap()).unwrap();
        assert_eq!(sig.kind(), SignatureKind::Task);
        assert_eq!(sig.task_id(), Some("a8b40867-33c8-4dee-93ce-fee7f40acdb5"));
        assert_eq!(json::to_string(&sig.to_value()).unwrap(), text);
        assert_eq!(sig.args_with_parent_result(&Value::Int(3)), vec![Value::Int(3), Value::Int(100)]);
    }

    #[test]
    fn group_members_and_extras() {
        let text = r#"{"task": "celery.group", "args": [], "kwargs": {"tasks": [{"task": "t.a", "args": [], "kwargs": {}, "options": {}, "subtask_type": null, "immutable": true}]}, "options": {}, "subtask_type": "group", "immutable": false, "chord_size": null}"#;
        let sig = Signature::from_value(&json::from_str(text).unwrap()).unwrap();
        assert_eq!(sig.kind(), SignatureKind::Group);
        let members = sig.tasks().unwrap();
        assert!(members[0].immutable);
        assert_eq!(members[0].args_with_parent_result(&Value::Int(1)), Vec::<Value>::new());
        assert_eq!(json::to_string(&sig.to_value()).unwrap(), text);
    }

    #[test]
    fn bad_signatures_are_errors() {
        for bad in [r#"[]"#, r#"{"task": 5}"#, r#"{"task": "x", "args": {}}"#, r#"{"task": "x", "options": []}"#] {
            assert!(Signature::from_value(&json::from_str(bad).unwrap()).is_err(), "{bad}");
        }
    }
}
