//! Celery's `task_routes`: which queue (and exchange, routing key, priority) a
//! task is sent to, by exact name or glob, first match wins.

use serde::{Deserialize, Serialize};

use crate::Settings;

/// Where to send a task. Unset fields fall back to the queue's own settings.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(from = "RouteSpelling")]
pub struct Route {
    /// Queue name.
    pub queue: Option<String>,
    /// Exchange name.
    pub exchange: Option<String>,
    /// Routing key.
    pub routing_key: Option<String>,
    /// Message priority.
    pub priority: Option<u8>,
}

/// `"queue"` or `{queue = ..., routing_key = ..., ...}`, both accepted by Celery.
#[derive(Deserialize)]
#[serde(untagged)]
enum RouteSpelling {
    Queue(String),
    Full {
        #[serde(default)]
        queue: Option<String>,
        #[serde(default)]
        exchange: Option<String>,
        #[serde(default)]
        routing_key: Option<String>,
        #[serde(default)]
        priority: Option<u8>,
    },
}

impl From<RouteSpelling> for Route {
    fn from(s: RouteSpelling) -> Route {
        match s {
            RouteSpelling::Queue(q) => Route { queue: Some(q), ..Route::default() },
            RouteSpelling::Full { queue, exchange, routing_key, priority } => {
                Route { queue, exchange, routing_key, priority }
            }
        }
    }
}

/// Whether `name` matches the glob `pattern` (`*` any run, `?` one character,
/// `[...]` a class), as Python's `fnmatch.fnmatchcase`.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    fn go(p: &[char], n: &[char]) -> bool {
        match p.split_first() {
            None => n.is_empty(),
            Some(('*', rest)) => (0..=n.len()).any(|i| go(rest, &n[i..])),
            Some(('?', rest)) => !n.is_empty() && go(rest, &n[1..]),
            Some(('[', rest)) => {
                let Some(close) = rest.iter().skip(1).position(|&c| c == ']').map(|i| i + 1) else {
                    return n.first() == Some(&'[') && go(rest, &n[1..]);
                };
                let Some((&c, n_rest)) = n.split_first() else {
                    return false;
                };
                let (negate, class) = match rest[..close].split_first() {
                    Some(('!', cls)) => (true, cls),
                    _ => (false, &rest[..close]),
                };
                let mut hit = false;
                let mut i = 0;
                while i < class.len() {
                    if i + 2 < class.len() && class[i + 1] == '-' {
                        hit |= class[i] <= c && c <= class[i + 2];
                        i += 3;
                    } else {
                        hit |= class[i] == c;
                        i += 1;
                    }
                }
                hit != negate && go(&rest[close + 1..], n_rest)
            }
            Some((&c, rest)) => n.first() == Some(&c) && go(rest, &n[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    go(&p, &n)
}

impl Settings {
    /// The route for `task`: the first matching `task_routes` entry (exact name
    /// or glob) filled in from `task_queues`, else the default queue.
    pub fn route_for(&self, task: &str) -> Route {
        let matched = self
            .task_routes
            .get(task)
            .or_else(|| self.task_routes.iter().find(|(pattern, _)| glob_match(pattern, task)).map(|(_, r)| r));
        match matched {
            Some(route) => self.complete(route.clone()),
            None => self.default_route(),
        }
    }

    /// Fills a route's exchange and routing key from its queue's settings.
    pub fn complete(&self, mut route: Route) -> Route {
        let queue = route.queue.clone().unwrap_or_else(|| self.task_default_queue.clone());
        let declared = self.task_queues.get(&queue);
        if route.exchange.is_none() {
            route.exchange = Some(declared.and_then(|q| q.exchange.clone()).unwrap_or_else(|| {
                if queue == self.task_default_queue {
                    self.task_default_exchange.clone().unwrap_or_else(|| queue.clone())
                } else {
                    queue.clone()
                }
            }));
        }
        if route.routing_key.is_none() {
            route.routing_key = Some(declared.and_then(|q| q.routing_key.clone()).unwrap_or_else(|| queue.clone()));
        }
        if route.priority.is_none() {
            route.priority = self.task_default_priority;
        }
        route.queue = Some(queue);
        route
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_as_fnmatch() {
        assert!(glob_match("transfer.*", "transfer.copy"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("transfer.*", "workflow.copy"));
        assert!(glob_match("t?sks.add", "tasks.add"));
        assert!(glob_match("tasks.[a-c]dd", "tasks.add"));
        assert!(!glob_match("tasks.[!a]dd", "tasks.add"));
        assert!(glob_match("a*b*c", "aXbYc"));
        assert!(!glob_match("a*b*c", "aXbY"));
    }
}
