//! Exchange types and the in-process record of declared exchanges and bindings.
//!
//! On Redis an exchange exists only in the memory of the process that declared
//! it (kombu's `BrokerState`): its type decides how a publish is routed, and an
//! exchange nobody declared here is treated as `direct`, as kombu's `typeof`
//! does. Bindings live in Redis (`_kombu.binding.*`); the process also remembers
//! the ones it made so `delete_queue` can remove them, as kombu's state does.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::error::BrokerError;

/// How an exchange routes (kombu's virtual exchange types).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum ExchangeKind {
    /// To the queues bound with exactly the routing key (the default).
    #[default]
    Direct,
    /// To the queues whose binding pattern (`*` one word, `#` any) matches.
    Topic,
    /// To every subscriber: PUB/SUB on Redis, not a queue.
    Fanout,
}

impl ExchangeKind {
    /// The kombu name: `direct`, `topic` or `fanout`.
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Fanout => "fanout",
        }
    }
}

impl std::str::FromStr for ExchangeKind {
    type Err = BrokerError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "direct" => Ok(ExchangeKind::Direct),
            "topic" => Ok(ExchangeKind::Topic),
            "fanout" => Ok(ExchangeKind::Fanout),
            other => Err(BrokerError::Config(format!(
                "exchange type {other:?} is not supported on Redis; use direct, topic or fanout"
            ))),
        }
    }
}

/// A binding made by this process: `(exchange, routing_key, pattern)`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Binding {
    /// The exchange.
    pub exchange: String,
    /// The binding key.
    pub routing_key: String,
    /// The stored pattern (`""` except for topic exchanges).
    pub pattern: String,
}

#[derive(Debug, Default)]
struct State {
    exchanges: HashMap<String, ExchangeKind>,
    bindings: HashMap<String, Vec<Binding>>,
}

/// The declared exchanges and this process's bindings; cheap to clone, shared.
#[derive(Clone, Debug, Default)]
pub struct ExchangeRegistry {
    state: Arc<RwLock<State>>,
}

impl ExchangeRegistry {
    /// Records an exchange's type (replacing an earlier declaration).
    pub fn declare(&self, name: &str, kind: ExchangeKind) {
        if let Ok(mut s) = self.state.write() {
            s.exchanges.insert(name.to_owned(), kind);
        }
    }

    /// The type of `name`: as declared, else `direct` (kombu's `typeof` default).
    pub fn kind_of(&self, name: &str) -> ExchangeKind {
        self.state.read().ok().and_then(|s| s.exchanges.get(name).copied()).unwrap_or_default()
    }

    /// Remembers a binding of `queue`.
    pub fn add_binding(&self, queue: &str, binding: Binding) {
        if let Ok(mut s) = self.state.write() {
            let list = s.bindings.entry(queue.to_owned()).or_default();
            if !list.contains(&binding) {
                list.push(binding);
            }
        }
    }

    /// Forgets a binding of `queue`.
    pub fn remove_binding(&self, queue: &str, binding: &Binding) {
        if let Ok(mut s) = self.state.write() {
            if let Some(list) = s.bindings.get_mut(queue) {
                list.retain(|b| b != binding);
            }
        }
    }

    /// Forgets and returns every binding of `queue` made by this process.
    pub fn take_bindings(&self, queue: &str) -> Vec<Binding> {
        self.state.write().ok().and_then(|mut s| s.bindings.remove(queue)).unwrap_or_default()
    }
}

/// kombu's `_lookup` through the anonymous exchange: the queue named by the
/// routing key, or the dead-letter queue when there is none.
pub(crate) fn route_anonymous(routing_key: &str, deadletter: Option<&str>) -> Vec<String> {
    if routing_key.is_empty() {
        deadletter.into_iter().map(str::to_owned).collect()
    } else {
        vec![routing_key.to_owned()]
    }
}

/// kombu's `_lookup` through a named exchange of `kind`, given its bindings as
/// `(routing_key, pattern, queue)`: the matching queues, sorted and unique, or
/// the dead-letter queue when none match. With `deliver`, a topic exchange
/// never routes to the dead-letter queue (`TopicExchange.deliver` filters it out).
pub(crate) fn route<'a>(
    kind: ExchangeKind,
    bindings: impl IntoIterator<Item = (&'a str, &'a str, &'a str)>,
    routing_key: &str,
    deadletter: Option<&str>,
    deliver: bool,
) -> Vec<String> {
    let mut queues: Vec<String> = bindings
        .into_iter()
        .filter(|(rk, pattern, _)| match kind {
            ExchangeKind::Direct => *rk == routing_key,
            ExchangeKind::Topic => crate::topic::pattern_matches(pattern, routing_key),
            ExchangeKind::Fanout => true,
        })
        .map(|(_, _, q)| q.to_owned())
        .collect();
    queues.sort();
    queues.dedup();
    if queues.is_empty() {
        queues.extend(deadletter.map(str::to_owned));
    }
    if deliver && kind == ExchangeKind::Topic {
        queues.retain(|q| !q.is_empty() && Some(q.as_str()) != deadletter);
    }
    queues
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undeclared_exchanges_are_direct() {
        let r = ExchangeRegistry::default();
        assert_eq!(r.kind_of("celery"), ExchangeKind::Direct);
        r.declare("celeryev", ExchangeKind::Topic);
        assert_eq!(r.clone().kind_of("celeryev"), ExchangeKind::Topic);
        assert_eq!("fanout".parse::<ExchangeKind>().unwrap(), ExchangeKind::Fanout);
        assert!("headers".parse::<ExchangeKind>().is_err());
    }

    #[test]
    fn bindings_are_remembered_once() {
        let r = ExchangeRegistry::default();
        let b = Binding { exchange: "celery".into(), routing_key: "celery".into(), pattern: String::new() };
        r.add_binding("celery", b.clone());
        r.add_binding("celery", b.clone());
        assert_eq!(r.take_bindings("celery"), vec![b]);
        assert!(r.take_bindings("celery").is_empty());
    }
}
