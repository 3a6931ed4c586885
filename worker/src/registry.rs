//! The registry: tasks by name, as a worker knows them, and the shared
//! states ([`State<T>`](crate::State)) their handlers take.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::extract::States;
use crate::Task;

/// Tasks by name. A worker runs the tasks in its registry and treats any
/// other name as unknown (Celery's `NotRegistered`).
///
/// It also holds the states ([`Registry::with_state`]) that tasks taking a
/// [`State<T>`](crate::State) are called with: one value per type, shared
/// by every task of the registry (and of registries merged into it).
#[derive(Debug, Clone, Default)]
pub struct Registry {
    tasks: BTreeMap<String, Task>,
    states: Arc<States>,
}

/// A task takes a [`State<T>`](crate::State) its registry has no value for:
/// refused at startup rather than failing every call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "task {task} takes State<{type_name}>, but no value of that type is registered; \
     add it with Registry::with_state(...) in the task set that registers {task}"
)]
pub struct MissingState {
    /// The task.
    pub task: String,
    /// The state's type as Rust spells it.
    pub type_name: &'static str,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Adds a task, replacing one of the same name.
    pub fn add(&mut self, mut task: Task) -> &mut Registry {
        task.bind_states(&self.states);
        self.tasks.insert(task.name.clone(), task);
        self
    }

    /// Adds a task, builder style.
    pub fn with(mut self, task: Task) -> Registry {
        self.add(task);
        self
    }

    /// Registers `value` for the tasks that take a `State<T>` of its type
    /// (a database pool, an HTTP client, settings), replacing a value of the
    /// same type. Tasks added before or after see it.
    pub fn add_state<T: std::any::Any + Send + Sync>(&mut self, value: T) -> &mut Registry {
        Arc::make_mut(&mut self.states).insert(value);
        self.rebind();
        self
    }

    /// Registers a state, builder style (see [`Registry::add_state`]).
    pub fn with_state<T: std::any::Any + Send + Sync>(mut self, value: T) -> Registry {
        self.add_state(value);
        self
    }

    /// Adds every task and every state of another registry (a task set);
    /// its tasks and states replace those of the same name or type.
    pub fn merge(&mut self, other: Registry) -> &mut Registry {
        self.tasks.extend(other.tasks);
        if !other.states.is_empty() {
            Arc::make_mut(&mut self.states).extend(Arc::unwrap_or_clone(other.states));
        }
        self.rebind();
        self
    }

    /// Calls every task with the current states.
    fn rebind(&mut self) {
        for task in self.tasks.values_mut() {
            task.bind_states(&self.states);
        }
    }

    /// The states.
    pub fn states(&self) -> &States {
        &self.states
    }

    /// Checks that every state a task takes is registered; a worker calls
    /// this before it starts, so a missing one is a startup error.
    pub fn check_states(&self) -> Result<(), MissingState> {
        for task in self.tasks.values() {
            if let Some(need) = task.state_needs().iter().find(|n| !self.states.contains(n.type_id)) {
                return Err(MissingState { task: task.name.clone(), type_name: need.type_name });
            }
        }
        Ok(())
    }

    /// The task of that name.
    pub fn get(&self, name: &str) -> Option<&Task> {
        self.tasks.get(name)
    }

    /// Names, sorted (as `celery inspect registered` lists them).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tasks.keys().map(String::as_str)
    }

    /// All tasks.
    pub fn tasks(&self) -> impl Iterator<Item = &Task> {
        self.tasks.values()
    }

    /// Number of tasks.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }
}
