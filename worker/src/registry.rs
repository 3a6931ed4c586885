//! The registry: tasks by name, as a worker knows them.

use std::collections::BTreeMap;

use crate::Task;

/// Tasks by name. A worker runs the tasks in its registry and treats any
/// other name as unknown (Celery's `NotRegistered`).
#[derive(Debug, Clone, Default)]
pub struct Registry {
    tasks: BTreeMap<String, Task>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Adds a task, replacing one of the same name.
    pub fn add(&mut self, task: Task) -> &mut Registry {
        self.tasks.insert(task.name.clone(), task);
        self
    }

    /// Adds a task, builder style.
    pub fn with(mut self, task: Task) -> Registry {
        self.add(task);
        self
    }

    /// Adds every task of another registry (a task set).
    pub fn merge(&mut self, other: Registry) -> &mut Registry {
        self.tasks.extend(other.tasks);
        self
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
