//! Python argument binding: a task declared with Python's signature
//! (`def add(x, y, z=None)`, `def retry_once(*args, expires=None, ...)`) takes
//! its arguments positionally or by keyword exactly as the Python function
//! would, and wrong calls fail with the `TypeError` text Python gives
//! (`add() missing 1 required positional argument: 'y'`).
//!
//! ```
//! use celeriac_protocol::{Map, Value};
//! use celeriac_tasks::pyargs::{Param, PySignature};
//!
//! const ADD: PySignature = PySignature::new("add", &[Param::required("x"), Param::required("y"), Param::optional("z")]);
//!
//! let mut kwargs = Map::new();
//! kwargs.insert("y".into(), Value::Int(2));
//! let bound = ADD.bind(vec![Value::Int(1)], kwargs).unwrap();
//! assert_eq!((bound.get("x"), bound.get("y"), bound.get("z")), (Some(&Value::Int(1)), Some(&Value::Int(2)), None));
//!
//! let err = ADD.bind(vec![Value::Int(1)], Map::new()).unwrap_err();
//! assert!(err.to_string().contains("add() missing 1 required positional argument: 'y'"));
//! ```

use celeriac_protocol::{Map, Value};
use celeriac_worker::TaskError;

/// How a parameter may be passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    /// Positionally or by keyword (`def f(x)`).
    PositionalOrKeyword,
    /// Only by keyword (after `*` or `*args`: `def f(*args, countdown=0.1)`).
    KeywordOnly,
}

/// One named parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Param {
    /// Its name.
    pub name: &'static str,
    /// How it may be passed.
    pub kind: ParamKind,
    /// Whether the call must give it (no default).
    pub required: bool,
}

impl Param {
    /// A positional-or-keyword parameter without a default.
    pub const fn required(name: &'static str) -> Param {
        Param { name, kind: ParamKind::PositionalOrKeyword, required: true }
    }

    /// A positional-or-keyword parameter with a default (the task applies it).
    pub const fn optional(name: &'static str) -> Param {
        Param { name, kind: ParamKind::PositionalOrKeyword, required: false }
    }

    /// A keyword-only parameter without a default.
    pub const fn keyword_required(name: &'static str) -> Param {
        Param { name, kind: ParamKind::KeywordOnly, required: true }
    }

    /// A keyword-only parameter with a default.
    pub const fn keyword_optional(name: &'static str) -> Param {
        Param { name, kind: ParamKind::KeywordOnly, required: false }
    }
}

/// A Python function's signature: its name (for messages), its named
/// parameters (positional ones taken in their order), and whether it has `*args`
/// and `**kwargs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PySignature {
    /// The function's name, as Python's messages show it (`add`).
    pub function: &'static str,
    /// The named parameters.
    pub params: &'static [Param],
    /// Whether extra positional arguments are collected (`*args`).
    pub var_args: bool,
    /// Whether extra keyword arguments are collected (`**kwargs`).
    pub var_kwargs: bool,
}

/// The arguments of one call, bound to a [`PySignature`]'s parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Bound {
    params: &'static [Param],
    values: Vec<Option<Value>>,
    /// Extra positional arguments (`*args`).
    pub var_args: Vec<Value>,
    /// Extra keyword arguments (`**kwargs`).
    pub var_kwargs: Map,
}

impl Bound {
    fn index(&self, name: &str) -> Option<usize> {
        self.params.iter().position(|p| p.name == name)
    }

    /// The argument given for `name` (positionally or by keyword); `None` if
    /// the call left it to its default or there is no such parameter.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.index(name).and_then(|i| self.values[i].as_ref())
    }

    /// Takes the argument given for `name` out.
    pub fn take(&mut self, name: &str) -> Option<Value> {
        let i = self.index(name)?;
        self.values[i].take()
    }

    /// Takes the argument for `name`, or `default` if the call gave none.
    /// Python's defaults apply only when the argument is left out: an explicit
    /// `None` stays `None`.
    pub fn take_or(&mut self, name: &str, default: Value) -> Value {
        self.take(name).unwrap_or(default)
    }
}

impl PySignature {
    /// `def function(<params>)`, without `*args` or `**kwargs`.
    pub const fn new(function: &'static str, params: &'static [Param]) -> PySignature {
        PySignature { function, params, var_args: false, var_kwargs: false }
    }

    /// The same with `*args`.
    pub const fn with_var_args(mut self) -> PySignature {
        self.var_args = true;
        self
    }

    /// The same with `**kwargs`.
    pub const fn with_var_kwargs(mut self) -> PySignature {
        self.var_kwargs = true;
        self
    }

    fn type_error(&self, what: impl std::fmt::Display) -> TaskError {
        TaskError::builtin("TypeError", format!("{}() {what}", self.function))
    }

    /// Binds a call's arguments as Python does, or fails with Python's
    /// `TypeError` for too many positional arguments, an unexpected or
    /// repeated keyword, or a missing argument.
    pub fn bind(&self, args: Vec<Value>, kwargs: Map) -> Result<Bound, TaskError> {
        let positional: Vec<usize> =
            (0..self.params.len()).filter(|&i| self.params[i].kind == ParamKind::PositionalOrKeyword).collect();
        let mut bound = Bound {
            params: self.params,
            values: vec![None; self.params.len()],
            var_args: Vec::new(),
            var_kwargs: Map::new(),
        };
        let given = args.len();
        if given > positional.len() && !self.var_args {
            let most = positional.len();
            let least = positional.iter().filter(|&&i| self.params[i].required).count();
            let takes = match (least == most, most == 1) {
                (true, true) => "1 positional argument".to_owned(),
                (true, false) => format!("{most} positional arguments"),
                (false, _) => format!("from {least} to {most} positional arguments"),
            };
            let were = if given == 1 { "was" } else { "were" };
            return Err(self.type_error(format!("takes {takes} but {given} {were} given")));
        }
        for (i, arg) in args.into_iter().enumerate() {
            match positional.get(i) {
                Some(&index) => bound.values[index] = Some(arg),
                None => bound.var_args.push(arg),
            }
        }
        for (key, value) in kwargs {
            match self.params.iter().position(|p| p.name == key) {
                Some(i) if bound.values[i].is_some() => {
                    return Err(self.type_error(format!("got multiple values for argument '{key}'")));
                }
                Some(i) => bound.values[i] = Some(value),
                None if self.var_kwargs => {
                    bound.var_kwargs.insert(key, value);
                }
                None => return Err(self.type_error(format!("got an unexpected keyword argument '{key}'"))),
            }
        }
        for (kind, label) in [(ParamKind::PositionalOrKeyword, "positional"), (ParamKind::KeywordOnly, "keyword-only")]
        {
            let missing: Vec<&str> = self
                .params
                .iter()
                .zip(&bound.values)
                .filter(|(p, v)| p.kind == kind && p.required && v.is_none())
                .map(|(p, _)| p.name)
                .collect();
            if !missing.is_empty() {
                let plural = if missing.len() == 1 { "" } else { "s" };
                return Err(self.type_error(format!(
                    "missing {} required {label} argument{plural}: {}",
                    missing.len(),
                    name_list(&missing)
                )));
            }
        }
        Ok(bound)
    }
}

/// `'x'`, `'x' and 'y'`, `'x', 'y', and 'z'`: how Python lists missing names.
fn name_list(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("'{n}'")).collect();
    match quoted.as_slice() {
        [] => String::new(),
        [one] => one.clone(),
        [a, b] => format!("{a} and {b}"),
        [init @ .., last] => format!("{}, and {last}", init.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADD: PySignature =
        PySignature::new("add", &[Param::required("x"), Param::required("y"), Param::optional("z")]);
    const NOTHING: PySignature = PySignature::new("ping", &[]);
    const ONE: PySignature = PySignature::new("identity", &[Param::required("x")]);
    const STAR: PySignature =
        PySignature::new("retry_once", &[Param::keyword_optional("expires"), Param::keyword_optional("countdown")])
            .with_var_args();
    const KW_ONLY: PySignature =
        PySignature::new("retry_unpickleable", &[Param::required("foo"), Param::keyword_required("retry_kwargs")]);
    const THREE: PySignature =
        PySignature::new("f", &[Param::required("a"), Param::required("b"), Param::required("c")]);

    fn kw(pairs: &[(&str, i64)]) -> Map {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), Value::Int(*v))).collect()
    }

    fn message(result: Result<Bound, TaskError>) -> String {
        match result {
            Err(TaskError::Failure { exc_type, exc_module, message, .. }) => {
                assert_eq!((exc_type.as_str(), exc_module.as_str()), ("TypeError", "builtins"));
                message
            }
            other => panic!("expected a TypeError, got {other:?}"),
        }
    }

    #[test]
    fn binds_like_python() {
        let b = ADD.bind(vec![Value::Int(1), Value::Int(2), Value::Int(3)], Map::new()).unwrap();
        assert_eq!(b.get("z"), Some(&Value::Int(3)));
        let mut b = ADD.bind(vec![], kw(&[("y", 2), ("x", 1)])).unwrap();
        assert_eq!((b.take("x"), b.take_or("z", Value::Null)), (Some(Value::Int(1)), Value::Null));

        let b = STAR.bind(vec![Value::Int(7), Value::Int(8)], kw(&[("countdown", 0)])).unwrap();
        assert_eq!((b.var_args.len(), b.get("countdown"), b.get("expires")), (2, Some(&Value::Int(0)), None));

        let b = ONE.with_var_kwargs().bind(vec![Value::Int(1)], kw(&[("other", 2)])).unwrap();
        assert_eq!(b.var_kwargs.get("other"), Some(&Value::Int(2)));
    }

    #[test]
    fn wrong_calls_give_pythons_messages() {
        assert_eq!(
            message(ADD.bind(vec![Value::Int(5)], Map::new())),
            "add() missing 1 required positional argument: 'y'"
        );
        assert_eq!(
            message(ADD.bind(vec![Value::Int(5), Value::Int(5)], kw(&[("wrong_arg", 5)]))),
            "add() got an unexpected keyword argument 'wrong_arg'"
        );
        assert_eq!(
            message(ADD.bind(vec![Value::Int(1); 4], Map::new())),
            "add() takes from 2 to 3 positional arguments but 4 were given"
        );
        assert_eq!(
            message(ADD.bind(vec![Value::Int(1)], kw(&[("x", 1)]))),
            "add() got multiple values for argument 'x'"
        );
        assert_eq!(
            message(NOTHING.bind(vec![Value::Null], Map::new())),
            "ping() takes 0 positional arguments but 1 was given"
        );
        assert_eq!(
            message(ONE.bind(vec![Value::Null, Value::Null], Map::new())),
            "identity() takes 1 positional argument but 2 were given"
        );
        assert_eq!(
            message(THREE.bind(vec![], Map::new())),
            "f() missing 3 required positional arguments: 'a', 'b', and 'c'"
        );
        assert_eq!(
            message(THREE.bind(vec![Value::Null], Map::new())),
            "f() missing 2 required positional arguments: 'b' and 'c'"
        );
        assert_eq!(
            message(KW_ONLY.bind(vec![Value::Null], Map::new())),
            "retry_unpickleable() missing 1 required keyword-only argument: 'retry_kwargs'"
        );
        assert_eq!(
            message(KW_ONLY.bind(vec![Value::Null, Value::Null], Map::new())),
            "retry_unpickleable() takes 1 positional argument but 2 were given"
        );
    }
}
