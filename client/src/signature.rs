//! The canvas builder: [`Signature`] (one task call with its options),
//! [`chain`], [`group`], [`chord`] and `a | b`, built as Celery builds them,
//! so that what a [`Client`](crate::Client) sends for a canvas is what
//! Celery 5.7 sends for the same canvas.
//!
//! ```
//! use celeriac_client::{chain, chord, group, Signature};
//!
//! let add = |x: i64, y: i64| Signature::new("tasks.add").args((x, y));
//! let workflow = chain([
//!     Signature::new("science.stage").args(("/data/run42",)),
//!     group([Signature::new("science.calibrate").arg(1), Signature::new("science.calibrate").arg(2)]),
//!     Signature::new("science.report").queue("reports"),
//! ]);
//! // A group followed by a task is a chord, as in Celery.
//! assert_eq!(workflow.members().len(), 2);
//! let total = chord([add(1, 1), add(2, 2)], Signature::new("tasks.tsum"));
//! let piped = add(1, 2) | Signature::new("tasks.add").arg(10).si();
//! # let _ = (total, piped);
//! ```
//!
//! Arguments are anything serde serializes; a value that does not serialize
//! (a map with non-string keys, ...) is reported when the canvas is applied
//! or frozen, as [`CanvasError::Invalid`].

use std::time::Duration;

use celeriac_protocol::signature::SignatureKind;
use celeriac_protocol::time::PyDateTime;
use celeriac_protocol::{to_value, Map, Signature as WireSignature, Value};
use serde::Serialize;

use crate::engine::{self, Header, Kind, Node};
use crate::CanvasError;

/// A task call, or a canvas of them (chain, group, chord), with its
/// execution options: Celery's `Signature` and its subclasses.
///
/// Built with [`Signature::new`] and the option methods, combined with
/// [`chain`], [`group`], [`chord`] and `|`, sent with
/// [`Client::apply_async`](crate::Client::apply_async).
#[derive(Clone, Debug, PartialEq)]
pub struct Signature {
    pub(crate) node: Node,
    /// The first argument that could not be converted, reported on apply.
    error: Option<String>,
}

/// Seconds as Python passes them: an `int` when whole, else a `float`.
fn seconds(d: Duration) -> Value {
    if d.subsec_nanos() == 0 {
        i64::try_from(d.as_secs()).map_or(Value::Float(d.as_secs_f64()), Value::Int)
    } else {
        Value::Float(d.as_secs_f64())
    }
}

impl Signature {
    /// A call of task `name` with no arguments (`app.signature(name)`).
    pub fn new(name: impl Into<String>) -> Signature {
        Signature { node: Node::task(name), error: None }
    }

    pub(crate) fn from_node(node: Node) -> Signature {
        Signature { node, error: None }
    }

    /// A signature read from Celery's dict form (what a message's `chain`,
    /// `chord` or `link` holds), any canvas type.
    pub fn from_wire(sig: WireSignature) -> Result<Signature, CanvasError> {
        let node = Node::from_wire(sig, 0).map_err(|e| CanvasError::Invalid { task: String::new(), reason: e.0 })?;
        Ok(Signature::from_node(node))
    }

    /// Celery's dict form of this signature (members and options included).
    pub fn to_wire(&self) -> Result<WireSignature, CanvasError> {
        self.check()?;
        WireSignature::from_value(&self.node.to_value())
            .map_err(|e| CanvasError::Invalid { task: self.node.task.clone(), reason: e.to_string() })
    }

    /// The error of an argument or option that could not be converted.
    pub(crate) fn check(&self) -> Result<(), CanvasError> {
        match &self.error {
            Some(reason) => Err(CanvasError::Invalid { task: self.node.task.clone(), reason: reason.clone() }),
            None => Ok(()),
        }
    }

    fn fail(mut self, what: &str, e: impl std::fmt::Display) -> Signature {
        if self.error.is_none() {
            self.error = Some(format!("{what}: {e}"));
        }
        self
    }

    fn merge_error(mut self, other: &Signature) -> Signature {
        if self.error.is_none() {
            self.error = other.error.clone();
        }
        self
    }

    /// The positional arguments, replacing any: a tuple (`(1, "two")`), an
    /// array, a `Vec`, or anything serde writes as a sequence.
    pub fn args<A: Serialize>(mut self, args: A) -> Signature {
        match to_value(&args) {
            Ok(Value::List(items)) => {
                self.node.args = items;
                self
            }
            Ok(other) => self.fail("args", format!("expected a sequence, got a {}", other.type_name())),
            Err(e) => self.fail("args", e),
        }
    }

    /// Appends one positional argument.
    pub fn arg<A: Serialize>(mut self, value: A) -> Signature {
        match to_value(&value) {
            Ok(v) => {
                self.node.args.push(v);
                self
            }
            Err(e) => self.fail("arg", e),
        }
    }

    /// The keyword arguments, replacing any: a struct or map serde writes as a map.
    pub fn kwargs<K: Serialize>(mut self, kwargs: K) -> Signature {
        match to_value(&kwargs) {
            Ok(Value::Map(map)) => {
                self.node.kwargs = map;
                self
            }
            Ok(other) => self.fail("kwargs", format!("expected a map, got a {}", other.type_name())),
            Err(e) => self.fail("kwargs", e),
        }
    }

    /// Sets one keyword argument.
    pub fn kwarg<V: Serialize>(mut self, key: impl Into<String>, value: V) -> Signature {
        match to_value(&value) {
            Ok(v) => {
                self.node.kwargs.insert(key.into(), v);
                self
            }
            Err(e) => self.fail("kwarg", e),
        }
    }

    /// Immutable (Celery's `si`): a parent's result is not prepended to the
    /// arguments.
    pub fn si(self) -> Signature {
        self.immutable(true)
    }

    /// Sets whether the signature is immutable (`set_immutable`): for a group
    /// or a chord header, each member.
    pub fn immutable(mut self, on: bool) -> Signature {
        match &mut self.node.kind {
            Kind::Group(tasks) => tasks.iter_mut().for_each(|t| set_immutable(t, on)),
            Kind::Chord { header, .. } => match header {
                Header::List(tasks) => tasks.iter_mut().for_each(|t| set_immutable(t, on)),
                Header::Group(group) => set_immutable(group, on),
            },
            _ => self.node.immutable = on,
        }
        self
    }

    /// Sets one execution option by its Celery name (`sig.set(name=value)`).
    /// Prefer the typed methods; names celeriac does not know are kept in the
    /// signature but not sent as message properties.
    pub fn set(mut self, name: impl Into<String>, value: impl Into<Value>) -> Signature {
        self.node.options.insert(name.into(), value.into());
        self
    }

    /// Sets several options, in order (`sig.set(**options)`).
    pub fn with_options(mut self, options: Map) -> Signature {
        self.node.options.extend(options);
        self
    }

    /// The task id to use (for a group or chord: the group id).
    pub fn task_id(self, id: impl Into<String>) -> Signature {
        self.set("task_id", Value::Str(id.into()))
    }

    /// Run no earlier than `delay` after sending.
    pub fn countdown(self, delay: Duration) -> Signature {
        self.set("countdown", seconds(delay))
    }

    /// Run no earlier than `at`.
    pub fn eta(self, at: PyDateTime) -> Signature {
        self.set("eta", Value::DateTime(at))
    }

    /// Expire (REVOKED, not run) if not started within `after` of sending.
    pub fn expires_in(self, after: Duration) -> Signature {
        self.set("expires", seconds(after))
    }

    /// Expire (REVOKED, not run) if not started by `at`.
    pub fn expires_at(self, at: PyDateTime) -> Signature {
        self.set("expires", Value::DateTime(at))
    }

    /// The queue to send to.
    pub fn queue(self, queue: impl Into<String>) -> Signature {
        self.set("queue", Value::Str(queue.into()))
    }

    /// The exchange to publish through.
    pub fn exchange(self, exchange: impl Into<String>) -> Signature {
        self.set("exchange", Value::Str(exchange.into()))
    }

    /// The routing key.
    pub fn routing_key(self, key: impl Into<String>) -> Signature {
        self.set("routing_key", Value::Str(key.into()))
    }

    /// Message priority (0-9; on Redis 0 is served first).
    pub fn priority(self, priority: u8) -> Signature {
        self.set("priority", Value::Int(i64::from(priority)))
    }

    /// Hard time limit.
    pub fn time_limit(self, limit: Duration) -> Signature {
        self.set("time_limit", seconds(limit))
    }

    /// Soft time limit.
    pub fn soft_time_limit(self, limit: Duration) -> Signature {
        self.set("soft_time_limit", seconds(limit))
    }

    /// Store no result.
    pub fn ignore_result(self, on: bool) -> Signature {
        self.set("ignore_result", Value::Bool(on))
    }

    /// The name shown in logs and events instead of the task's.
    pub fn shadow(self, name: impl Into<String>) -> Signature {
        self.set("shadow", Value::Str(name.into()))
    }

    /// Custom message headers, beside Celery's own.
    pub fn headers(self, headers: Map) -> Signature {
        self.set("headers", Value::Map(headers))
    }

    /// The serializer of the message (`json`, `msgpack`, `yaml`).
    pub fn serializer(self, name: impl Into<String>) -> Signature {
        self.set("serializer", Value::Str(name.into()))
    }

    /// Adds a callback applied with the result on success (`sig.link(cb)`;
    /// a group links its first member, a chord its body).
    pub fn link(mut self, callback: Signature) -> Signature {
        self.node.link(&callback.node);
        self.merge_error(&callback)
    }

    /// Adds an errback applied with the task id on failure
    /// (`sig.link_error(eb)`; a group links each member, a chord its body).
    pub fn link_error(mut self, errback: Signature) -> Signature {
        self.node.link_error(&errback.node);
        self.merge_error(&errback)
    }

    /// Stamps the signature (`sig.stamp(name=value)`): each task sent carries
    /// the stamp in its `stamps` header, which `revoke_by_stamped_headers`
    /// matches. A chord's body is not stamped, as in Celery.
    pub fn stamp(mut self, name: impl Into<String>, value: impl Into<Value>) -> Signature {
        let mut stamps = Map::new();
        stamps.insert(name.into(), value.into());
        self.node.stamp(&stamps);
        self
    }

    /// `self | next`: a chain, or for a group followed by a task a chord.
    pub fn then(self, next: Signature) -> Signature {
        let error = self.error.clone().or_else(|| next.error.clone());
        Signature { node: engine::or(self.node, next.node), error }
    }

    /// The task name (`celery.chain`, `celery.group`, `celery.chord` for canvases).
    pub fn name(&self) -> &str {
        &self.node.task
    }

    /// What kind of canvas element this is.
    pub fn kind(&self) -> SignatureKind {
        match &self.node.kind {
            Kind::Task => SignatureKind::Task,
            Kind::Group(_) => SignatureKind::Group,
            Kind::Chain(_) => SignatureKind::Chain,
            Kind::Chord { .. } => SignatureKind::Chord,
            Kind::Other(_) => SignatureKind::Other,
        }
    }

    /// The id given (`options.task_id`), if any yet.
    pub fn id(&self) -> Option<&str> {
        self.node.options.get("task_id").and_then(Value::as_str)
    }

    /// The positional arguments.
    pub fn arguments(&self) -> &[Value] {
        &self.node.args
    }

    /// The keyword arguments.
    pub fn keyword_arguments(&self) -> &Map {
        &self.node.kwargs
    }

    /// The execution options, in the order they were set.
    pub fn options(&self) -> &Map {
        &self.node.options
    }

    /// Whether a parent's result is not prepended.
    pub fn is_immutable(&self) -> bool {
        self.node.immutable
    }

    /// The members of a group or chain, the header of a chord; empty for a task.
    pub fn members(&self) -> Vec<Signature> {
        let nodes: &[Node] = match &self.node.kind {
            Kind::Group(tasks) | Kind::Chain(tasks) => tasks,
            Kind::Chord { header: Header::List(tasks), .. } => tasks,
            Kind::Chord { header: Header::Group(group), .. } => group.members(),
            _ => &[],
        };
        nodes.iter().cloned().map(Signature::from_node).collect()
    }

    /// A chord's body.
    pub fn body(&self) -> Option<Signature> {
        match &self.node.kind {
            Kind::Chord { body: Some(body), .. } => Some(Signature::from_node((**body).clone())),
            _ => None,
        }
    }

    /// How many header parts this counts for in a chord (Celery's `_descend`).
    pub fn chord_size(&self) -> u64 {
        match &self.node.kind {
            Kind::Chord { header, .. } => match header {
                Header::List(tasks) => tasks.iter().map(Node::descend).sum(),
                Header::Group(group) => group.descend(),
            },
            _ => self.node.descend(),
        }
    }
}

fn set_immutable(node: &mut Node, on: bool) {
    match &mut node.kind {
        Kind::Group(tasks) => tasks.iter_mut().for_each(|t| set_immutable(t, on)),
        _ => node.immutable = on,
    }
}

impl std::ops::BitOr for Signature {
    type Output = Signature;

    /// `a | b`, as in Celery: task | task is a chain, chain | task extends it,
    /// group | task is a chord, chord | task extends the chord's body.
    fn bitor(self, next: Signature) -> Signature {
        self.then(next)
    }
}

fn first_error<'a>(sigs: impl IntoIterator<Item = &'a Signature>) -> Option<String> {
    sigs.into_iter().find_map(|s| s.error.clone())
}

/// `chain(a, b, c)`: each task gets the previous one's result prepended.
/// Folded as `a | b | c`, so a group followed by a task becomes a chord, as
/// Celery does; the result may be a chord, a group or a task.
pub fn chain(tasks: impl IntoIterator<Item = Signature>) -> Signature {
    let tasks: Vec<Signature> = tasks.into_iter().collect();
    let error = first_error(&tasks);
    Signature { node: engine::fold_chain(tasks.into_iter().map(|s| s.node).collect()), error }
}

/// `group(a, b, c)`: the tasks run in parallel; the group's result is the
/// list of theirs, in order.
pub fn group(tasks: impl IntoIterator<Item = Signature>) -> Signature {
    let tasks: Vec<Signature> = tasks.into_iter().collect();
    let error = first_error(&tasks);
    Signature { node: Node::group(tasks.into_iter().map(|s| s.node).collect(), Map::new()), error }
}

/// `chord(header, body)`: the header tasks run in parallel, then the body
/// gets the list of their results. Give the header's group id with
/// [`Signature::task_id`] on the chord.
pub fn chord(header: impl IntoIterator<Item = Signature>, body: Signature) -> Signature {
    let header: Vec<Signature> = header.into_iter().collect();
    let error = first_error(header.iter().chain([&body]));
    let header = header.into_iter().map(|s| s.node.clone_sig()).collect();
    Signature { node: Node::chord(header, Some(body.node), Map::new()), error }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(x: i64, y: i64) -> Signature {
        Signature::new("tasks.add").args((x, y))
    }

    #[test]
    fn arguments_and_options_keep_their_order() {
        let sig = Signature::new("tasks.echo")
            .args((1, "two"))
            .kwarg("flag", true)
            .queue("q")
            .priority(3)
            .countdown(Duration::from_millis(1500))
            .time_limit(Duration::from_secs(30));
        assert_eq!(sig.arguments(), [Value::Int(1), Value::Str("two".into())]);
        assert_eq!(sig.keyword_arguments().get("flag"), Some(&Value::Bool(true)));
        let keys: Vec<&str> = sig.options().keys().map(String::as_str).collect();
        assert_eq!(keys, ["queue", "priority", "countdown", "time_limit"]);
        assert_eq!(sig.options().get("countdown"), Some(&Value::Float(1.5)));
        assert_eq!(sig.options().get("time_limit"), Some(&Value::Int(30)));
    }

    #[test]
    fn arguments_that_do_not_convert_are_reported_later() {
        let sig = Signature::new("t").args(5);
        let err = sig.check().unwrap_err().to_string();
        assert!(err.contains("args") && err.contains("sequence"), "{err}");
        let mut bad = std::collections::HashMap::new();
        bad.insert(vec![1u8], 1);
        let err = Signature::new("t").arg(bad).check().unwrap_err().to_string();
        assert!(err.contains("arg"), "{err}");
        // The error travels with the canvas it is put in.
        assert!(chain([add(1, 1), Signature::new("t").args(5)]).check().is_err());
        assert!(add(1, 1).link(Signature::new("t").args(5)).check().is_err());
    }

    #[test]
    fn pipes_build_what_celery_builds() {
        // task | task | task: one flat chain.
        let c = add(1, 1) | add(2, 2) | add(3, 3);
        assert_eq!(c.kind(), SignatureKind::Chain);
        assert_eq!(c.members().len(), 3);
        // group | task: a chord whose header is the group's tasks.
        let ch = group([add(1, 1), add(2, 2)]) | Signature::new("tasks.tsum");
        assert_eq!(ch.kind(), SignatureKind::Chord);
        assert_eq!(ch.members().len(), 2);
        assert_eq!(ch.body().map(|b| b.name().to_owned()), Some("tasks.tsum".into()));
        // chord | task: the body becomes a chain.
        let longer = ch | add(0, 1);
        assert_eq!(longer.body().map(|b| b.kind()), Some(SignatureKind::Chain));
        // chain(group, task) is a chord, not a chain.
        assert_eq!(chain([group([add(1, 1), add(2, 2)]), add(3, 3)]).kind(), SignatureKind::Chord);
        // chain(task, group, task): the group and the task become a chord step.
        let c = chain([add(1, 1), group([add(1, 1), add(2, 2)]), add(3, 3)]);
        let kinds: Vec<SignatureKind> = c.members().iter().map(Signature::kind).collect();
        assert_eq!(kinds, [SignatureKind::Task, SignatureKind::Chord]);
        // A group of one is that one.
        assert_eq!((add(1, 1) | group([add(2, 2)])).members()[1].kind(), SignatureKind::Task);
    }

    #[test]
    fn immutable_and_links() {
        let s = add(1, 1).si();
        assert!(s.is_immutable());
        let g = group([add(1, 1), add(2, 2)]).link(Signature::new("tasks.done"));
        // A group links its first member, immutably.
        let first = &g.members()[0];
        let link = first.options().get("link").and_then(Value::as_list).map(<[Value]>::to_vec).unwrap_or_default();
        assert_eq!(link.len(), 1);
        assert_eq!(link[0].as_map().and_then(|m| m.get("immutable")), Some(&Value::Bool(true)));
        assert!(g.members()[1].options().get("link").is_none());
        let s = add(1, 1).link(add(0, 1)).link(add(0, 1));
        assert_eq!(s.options().get("link").and_then(Value::as_list).map(<[Value]>::len), Some(1), "no duplicates");
    }

    #[test]
    fn wire_form_round_trips() {
        let c = chord([add(1, 1), chain([add(2, 2), add(3, 0)])], Signature::new("tasks.tsum")).task_id("g");
        let wire = c.to_wire().unwrap();
        assert_eq!(wire.kind(), SignatureKind::Chord);
        let back = Signature::from_wire(wire).unwrap();
        assert_eq!(back, c);
        assert_eq!(c.chord_size(), 2);
    }
}
