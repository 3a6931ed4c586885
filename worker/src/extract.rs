//! Extractors: the parameters a task function declares (`Args<T>`,
//! `Kwargs<T>`, `Ctx`, `State<T>`), each taken from the request or the
//! registry, as axum takes handler parameters from an HTTP request.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::Arc;

use celeriac_protocol::{from_value, Map, Value};
use serde::de::DeserializeOwned;

use crate::{Ctx, TaskError};

/// What a handler is called with: the context, which carries the request
/// and so the arguments, and the shared state of the registry the task is in.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// The context.
    pub ctx: Ctx,
    /// The registry's states ([`State`]), when the task is in a registry that has some.
    states: Option<Arc<States>>,
}

impl Invocation {
    /// An invocation for the request `ctx` holds.
    pub fn new(ctx: Ctx) -> Invocation {
        Invocation { ctx, states: None }
    }

    /// The same invocation with `states` for its [`State`] extractors.
    pub fn with_states(mut self, states: Arc<States>) -> Invocation {
        self.states = Some(states);
        self
    }

    /// The state of type `T` registered for the task, if any.
    pub fn state<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.states.as_deref().and_then(States::get::<T>)
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

    /// The state this parameter needs registered ([`State<T>`] names its
    /// `T`), so that a registry can refuse to start without it.
    fn needs_state() -> Option<StateNeed> {
        None
    }
}

/// A state type a task's parameter needs: its id and its name for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateNeed {
    /// The type's id.
    pub type_id: TypeId,
    /// The type's name as Rust spells it.
    pub type_name: &'static str,
}

impl StateNeed {
    /// The need of a `State<T>`.
    pub fn of<T: Any>() -> StateNeed {
        StateNeed { type_id: TypeId::of::<T>(), type_name: std::any::type_name::<T>() }
    }
}

/// Shared resources by type (database pools, HTTP clients, settings),
/// registered once with [`Registry::with_state`](crate::Registry::with_state)
/// and handed to every task that takes a [`State<T>`].
#[derive(Clone, Default)]
pub struct States {
    by_type: HashMap<TypeId, (Arc<dyn Any + Send + Sync>, &'static str)>,
}

impl std::fmt::Debug for States {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.by_type.values().map(|(_, name)| name)).finish()
    }
}

impl States {
    /// Adds `value`, replacing a value of the same type.
    pub fn insert<T: Any + Send + Sync>(&mut self, value: T) {
        self.by_type.insert(TypeId::of::<T>(), (Arc::new(value), std::any::type_name::<T>()));
    }

    /// The value of type `T`, if one was added.
    pub fn get<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.by_type.get(&TypeId::of::<T>()).and_then(|(v, _)| v.downcast_ref::<T>())
    }

    /// Whether a value of that type was added.
    pub fn contains(&self, type_id: TypeId) -> bool {
        self.by_type.contains_key(&type_id)
    }

    /// Adds every value of `other`, replacing values of the same types.
    pub fn extend(&mut self, other: States) {
        self.by_type.extend(other.by_type);
    }

    /// Whether none was added.
    pub fn is_empty(&self) -> bool {
        self.by_type.is_empty()
    }

    /// How many types have a value.
    pub fn len(&self) -> usize {
        self.by_type.len()
    }
}

/// A shared resource registered once with
/// [`Registry::with_state`](crate::Registry::with_state), as axum's `State`:
/// each call gets a clone, so register something cheap to clone (a pool, an
/// `Arc<T>`, a client handle).
///
/// ```
/// use std::sync::Arc;
/// use celeriac_worker::{Args, Registry, State, Task, TaskError};
///
/// struct Catalog { prefix: String }
///
/// async fn locate(State(catalog): State<Arc<Catalog>>, Args((run,)): Args<(u64,)>) -> Result<String, TaskError> {
///     Ok(format!("{}/run{run}", catalog.prefix))
/// }
///
/// let registry = Registry::new()
///     .with_state(Arc::new(Catalog { prefix: "/data".into() }))
///     .with(Task::new("science.locate", locate));
/// assert!(registry.check_states().is_ok());
/// // Without the state the registry refuses to start:
/// let err = Registry::new().with(Task::new("science.locate", locate)).check_states().unwrap_err();
/// assert!(err.to_string().contains("science.locate"));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct State<T>(pub T);

impl<T> std::ops::Deref for State<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: Any + Clone + Send + Sync> FromInvocation for State<T> {
    fn from_invocation(inv: &Invocation) -> Result<Self, TaskError> {
        inv.state::<T>().cloned().map(State).ok_or_else(|| {
            TaskError::builtin(
                "RuntimeError",
                format!(
                    "task {} takes State<{}>, but its registry has no value of that type; \
                     register one with Registry::with_state",
                    inv.ctx.name(),
                    std::any::type_name::<T>()
                ),
            )
        })
    }

    fn needs_state() -> Option<StateNeed> {
        Some(StateNeed::of::<T>())
    }
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
