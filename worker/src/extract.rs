//! Extractors: the parameters a task function declares (`Args<T>`,
//! `Kwargs<T>`, `Ctx`), each taken from the request, as axum takes handler
//! parameters from an HTTP request.

use celeriac_protocol::{from_value, Map, Value};
use serde::de::DeserializeOwned;

use crate::{Ctx, TaskError};

/// What a handler is called with: the context, which carries the request
/// and so the arguments.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// The context.
    pub ctx: Ctx,
}

impl Invocation {
    /// An invocation for the request `ctx` holds.
    pub fn new(ctx: Ctx) -> Invocation {
        Invocation { ctx }
    }

    /// Positional arguments.
    pub fn args(&self) -> &[Value] {
        &self.ctx.request().args
    }

    /// Keyword arguments.
    pub fn kwargs(&self) -> &Map {
        &self.ctx.request().kwargs
    }
}

/// A type a task can take as a parameter.
pub trait FromInvocation: Sized {
    /// Takes the value from the invocation; an error fails the task (as
    /// Python fails a call with wrong arguments, with a `TypeError`).
    fn from_invocation(inv: &Invocation) -> Result<Self, TaskError>;
}

/// The positional arguments as `T`: a tuple (`Args<(i64, i64)>`), a `Vec`,
/// or any serde type that reads from a list.
#[derive(Debug, Clone, PartialEq)]
pub struct Args<T>(pub T);

impl<T: DeserializeOwned> FromInvocation for Args<T> {
    fn from_invocation(inv: &Invocation) -> Result<Self, TaskError> {
        from_value(Value::List(inv.args().to_vec()))
            .map(Args)
            .map_err(|e| TaskError::builtin("TypeError", format!("{}() positional arguments: {e}", inv.ctx.name())))
    }
}

/// The keyword arguments as `T`: usually a struct with serde's `Deserialize`
/// (missing optional fields as `Option` or `#[serde(default)]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Kwargs<T>(pub T);

impl<T: DeserializeOwned> FromInvocation for Kwargs<T> {
    fn from_invocation(inv: &Invocation) -> Result<Self, TaskError> {
        from_value(Value::Map(inv.kwargs().clone()))
            .map(Kwargs)
            .map_err(|e| TaskError::builtin("TypeError", format!("{}() keyword arguments: {e}", inv.ctx.name())))
    }
}

impl FromInvocation for Ctx {
    fn from_invocation(inv: &Invocation) -> Result<Self, TaskError> {
        Ok(inv.ctx.clone())
    }
}

/// The raw arguments, for tasks that take anything.
#[derive(Debug, Clone, PartialEq)]
pub struct RawArgs(pub Vec<Value>, pub Map);

impl FromInvocation for RawArgs {
    fn from_invocation(inv: &Invocation) -> Result<Self, TaskError> {
        Ok(RawArgs(inv.args().to_vec(), inv.kwargs().clone()))
    }
}
