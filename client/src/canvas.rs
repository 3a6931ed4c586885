//! Applying a canvas signature as Celery does: a plain task, a group, a
//! chain or a chord, with a previous result to prepend, the rest of a chain
//! to continue with, and the parent and root ids of the workflow.
//!
//! This is what a Celery worker does with the next step of a chain, with a
//! task's links, and with a chord body once its header is done
//! (`Signature.apply_async` for each canvas type, `celery.canvas`), and what
//! a producer does with a canvas it sends. The rules, captured from Celery
//! 5.7 (see `canvas.md` in the design references):
//!
//! - a plain task is sent with `[previous result] + args` unless immutable,
//!   and its options: `task_id`, routing, `group_id`/`group_index`, `chord`
//!   (the body it is a header part of), `chain` (what follows it), links,
//!   time limits, `replaced_task_nesting`, stamps;
//! - a group sends each member with `group = <the group's task_id>` and its
//!   position as `group_index`; nested groups are flattened; a member chain
//!   gets its group membership on its last step; a group followed by more
//!   steps is a chord whose body is the next step;
//! - a chord sets its size in the result backend (each plain task counts one,
//!   a chain counts as its last step), then sends its header as a group whose
//!   members carry the body (with `group_id`, `root_id` and the rest of the
//!   outer chain in its options);
//! - a chain sends its first step with the others (and the outer rest) as
//!   the `chain` of that message, in Celery's reversed order.

use celeriac_broker::{BrokerError, Expires, Producer, SendOptions};
use celeriac_protocol::result::ResultTuple;
use celeriac_protocol::signature::SignatureKind;
use celeriac_protocol::time::PyDateTime;
use celeriac_protocol::{Map, Signature, Value};
use futures_util::future::BoxFuture;

/// Why a canvas could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum CanvasError {
    /// A message could not be published.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The chord size could not be recorded in the result backend.
    #[error("cannot record the size of chord {group_id}: {reason}")]
    ChordSize {
        /// The chord's group id.
        group_id: String,
        /// What the backend said.
        reason: String,
    },
    /// A chord needs a result backend that joins (Celery's Redis backend).
    #[error("chord {0} needs a result backend; set result_backend")]
    NoBackend(String),
    /// The signature is not a canvas Celery would apply.
    #[error("cannot apply {task}: {reason}")]
    Invalid {
        /// The signature's task.
        task: String,
        /// What is wrong.
        reason: String,
    },
}

/// Where a chord's size goes: the result backend's join (`set_chord_size`).
pub trait ChordSizes: Send + Sync {
    /// Records that chord `group_id` completes after `size` header parts.
    fn set_chord_size(&self, group_id: &str, size: u64) -> BoxFuture<'_, Result<(), String>>;
}

impl ChordSizes for celeriac_backend::RedisBackend {
    fn set_chord_size(&self, group_id: &str, size: u64) -> BoxFuture<'_, Result<(), String>> {
        let group_id = group_id.to_owned();
        Box::pin(async move {
            celeriac_backend::RedisBackend::set_chord_size(self, &group_id, size).await.map_err(|e| e.to_string())
        })
    }
}

/// The workflow a signature is applied in: what Celery's tracer passes to
/// `apply_async` for a task's children.
#[derive(Clone, Debug, Default)]
pub struct Lineage {
    /// The task that applies it (`parent_id` of what is sent).
    pub parent_id: Option<String>,
    /// The workflow's first task (`root_id`); `None`: each message is its own root.
    pub root_id: Option<String>,
    /// The priority to send with when a signature names none.
    pub priority: Option<u8>,
}

/// What was sent: a task id, or a group of them (for `children` and results).
#[derive(Clone, Debug, PartialEq)]
pub enum Applied {
    /// One task.
    Task(String),
    /// A group (or a chord's header): its id and members.
    Group(String, Vec<Applied>),
}

impl Applied {
    /// Celery's result tuple of it, as stored in a parent's `children`.
    pub fn to_tuple(&self) -> ResultTuple {
        match self {
            Applied::Task(id) => ResultTuple::task(id),
            Applied::Group(id, members) => ResultTuple::group(id, members.iter().map(Applied::to_tuple).collect()),
        }
    }

    /// The id of the task or group.
    pub fn id(&self) -> &str {
        match self {
            Applied::Task(id) | Applied::Group(id, _) => id,
        }
    }
}

/// Applies signatures through a producer, with a result backend for chords.
pub struct Applier<'a> {
    producer: &'a Producer,
    chords: Option<&'a dyn ChordSizes>,
}

/// Group membership given to a task sent as part of a group or chord header.
#[derive(Clone, Debug)]
struct Member {
    group_id: String,
    index: i64,
    chord: Option<Signature>,
}

impl<'a> Applier<'a> {
    /// Applies through `producer`; chords record their size in `chords`.
    pub fn new(producer: &'a Producer, chords: Option<&'a dyn ChordSizes>) -> Applier<'a> {
        Applier { producer, chords }
    }

    /// Applies `sig` with `prev` prepended to its arguments (unless it is
    /// immutable), followed by `rest` (a chain in Celery's reversed order:
    /// the next step last).
    pub fn apply<'s>(
        &'s self,
        sig: Signature,
        prev: Option<Value>,
        rest: Vec<Signature>,
        lineage: &'s Lineage,
    ) -> BoxFuture<'s, Result<Applied, CanvasError>> {
        Box::pin(async move {
            let mut sig = sig;
            let mut rest = rest;
            if rest.is_empty() && !matches!(sig.kind(), SignatureKind::Task | SignatureKind::Other) {
                // A canvas body that carries the rest of an outer chain.
                if let Some(Value::List(chain)) = sig.options.shift_remove("chain") {
                    rest = parse_all(&sig, &chain)?;
                }
            }
            match sig.kind() {
                SignatureKind::Group => {
                    match rest.pop() {
                        // group(...) | next: a chord whose body is the next step.
                        Some(mut body) => {
                            if !rest.is_empty() {
                                set_list(&mut body.options, "chain", &rest);
                            }
                            self.chord(sig_members(&sig, "tasks")?, body, group_id(&sig), prev, Vec::new(), lineage)
                                .await
                        }
                        None => self.group(&sig, prev, lineage).await,
                    }
                }
                SignatureKind::Chord => {
                    let header = match sig.kwargs.get("header") {
                        Some(v @ Value::Map(_)) => {
                            let group = Signature::from_value(v).map_err(|e| invalid(&sig, e.to_string()))?;
                            let mut members = sig_members(&group, "tasks")?;
                            if group.kind() != SignatureKind::Group {
                                members = vec![group];
                            }
                            members
                        }
                        Some(Value::List(items)) => parse_all(&sig, items)?,
                        _ => return Err(invalid(&sig, "a chord without a header".into())),
                    };
                    let mut body = match sig.kwargs.get("body") {
                        Some(v) => Signature::from_value(v).map_err(|e| invalid(&sig, e.to_string()))?,
                        None => return Err(invalid(&sig, "a chord without a body".into())),
                    };
                    // The chord's own links (a chain's `link` lands on its
                    // last step, a chord) go on its body, as `chord.run` does.
                    let mut links = Map::new();
                    for key in ["link", "link_error"] {
                        if let Some(v) = sig.options.get(key).filter(|v| !v.is_null()) {
                            links.insert(key.into(), v.clone());
                        }
                    }
                    if !links.is_empty() {
                        let node = crate::engine::Node::from_value(&body.to_value())
                            .map_err(|e| invalid(&sig, e.0.clone()))?;
                        let node = crate::engine::add_body_callbacks(node, &mut links);
                        body = Signature::from_value(&node.to_value()).map_err(|e| invalid(&sig, e.to_string()))?;
                    }
                    let gid = sig
                        .kwargs
                        .get("header")
                        .and_then(|h| h.as_map())
                        .and_then(|h| h.get("options"))
                        .and_then(Value::as_map)
                        .and_then(|o| o.get("task_id"))
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                        .or_else(|| option_str(&sig.options, "task_id"));
                    self.chord(header, body, gid, prev, rest, lineage).await
                }
                SignatureKind::Chain => {
                    let mut steps = sig_members(&sig, "tasks")?;
                    if steps.is_empty() {
                        // An empty chain: go on with what follows, if anything.
                        return match rest.pop() {
                            Some(next) => self.apply(next, prev, rest, lineage).await,
                            None => Ok(Applied::Group(uuid::Uuid::new_v4().to_string(), Vec::new())),
                        };
                    }
                    // The chain's own options (links, routing) belong to its steps:
                    // `link` to the last, the rest to each, as Celery's chain.run does.
                    spread_chain_options(&sig, &mut steps);
                    let first = steps.remove(0);
                    rest.extend(steps.into_iter().rev());
                    self.apply(first, prev, rest, lineage).await
                }
                SignatureKind::Task | SignatureKind::Other => self.send(sig, prev, rest, None, lineage).await,
            }
        })
    }

    /// Sends every member of a group (flattened), as its members.
    async fn group(&self, sig: &Signature, prev: Option<Value>, lineage: &Lineage) -> Result<Applied, CanvasError> {
        let gid = group_id(sig).unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let members = sig_members(sig, "tasks")?;
        let mut applied = Vec::with_capacity(members.len());
        for (member, index) in flatten(members)? {
            let m = Member { group_id: gid.clone(), index, chord: None };
            applied.push(self.member(member, prev.clone(), m, lineage).await?);
        }
        Ok(Applied::Group(gid, applied))
    }

    /// Sets the chord's size, then sends its header with the body attached.
    async fn chord(
        &self,
        header: Vec<Signature>,
        mut body: Signature,
        gid: Option<String>,
        prev: Option<Value>,
        rest: Vec<Signature>,
        lineage: &Lineage,
    ) -> Result<Applied, CanvasError> {
        let gid = gid.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        body.options.insert("group_id".into(), Value::Str(gid.clone()));
        if !body.options.contains_key("task_id") {
            body.options.insert("task_id".into(), Value::Str(uuid::Uuid::new_v4().to_string()));
        }
        if let Some(root) = &lineage.root_id {
            body.options.insert("root_id".into(), Value::Str(root.clone()));
        }
        if !rest.is_empty() {
            set_list(&mut body.options, "chain", &rest);
        }
        let members = flatten(header)?;
        let size: u64 = members.iter().map(|(m, _)| descend(m)).sum();
        if members.is_empty() {
            // An empty header: the body runs at once with no results.
            self.apply(body, Some(Value::List(Vec::new())), Vec::new(), lineage).await?;
            return Ok(Applied::Group(gid, Vec::new()));
        }
        let chords = self.chords.ok_or_else(|| CanvasError::NoBackend(gid.clone()))?;
        chords
            .set_chord_size(&gid, size)
            .await
            .map_err(|reason| CanvasError::ChordSize { group_id: gid.clone(), reason })?;
        let mut applied = Vec::with_capacity(members.len());
        for (member, index) in members {
            let m = Member { group_id: gid.clone(), index, chord: Some(body.clone()) };
            applied.push(self.member(member, prev.clone(), m, lineage).await?);
        }
        Ok(Applied::Group(gid, applied))
    }

    /// Sends one group or chord-header member.
    async fn member(
        &self,
        mut member: Signature,
        prev: Option<Value>,
        m: Member,
        lineage: &Lineage,
    ) -> Result<Applied, CanvasError> {
        match member.kind() {
            SignatureKind::Chain => {
                // The membership goes on the chain's last step.
                let mut steps = sig_members(&member, "tasks")?;
                spread_chain_options(&member, &mut steps);
                let Some(last) = steps.last_mut() else { return Ok(Applied::Group(m.group_id, Vec::new())) };
                last.options.insert("group_id".into(), Value::Str(m.group_id.clone()));
                last.options.insert("group_index".into(), Value::Int(m.index));
                if let Some(chord) = &m.chord {
                    last.options.insert("chord".into(), chord.to_value());
                }
                let first = steps.remove(0);
                let rest: Vec<Signature> = steps.into_iter().rev().collect();
                if rest.is_empty() {
                    return Box::pin(self.member(first, prev, m, lineage)).await;
                }
                self.apply(first, prev, rest, lineage).await
            }
            SignatureKind::Chord => {
                // A chord in a group: its body is the part that counts.
                if let Some(Value::Map(body)) = member.kwargs.get_mut("body") {
                    if let Some(Value::Map(options)) = body.get_mut("options") {
                        options.insert("group_index".into(), Value::Int(m.index));
                        if let Some(chord) = &m.chord {
                            options.insert("chord".into(), chord.to_value());
                        }
                    }
                }
                self.apply(member, prev, Vec::new(), lineage).await
            }
            _ => self.send(member, prev, Vec::new(), Some(m), lineage).await,
        }
    }

    /// Sends a plain task signature.
    async fn send(
        &self,
        sig: Signature,
        prev: Option<Value>,
        rest: Vec<Signature>,
        member: Option<Member>,
        lineage: &Lineage,
    ) -> Result<Applied, CanvasError> {
        let mut args = sig.args.clone();
        if let (Some(prev), false) = (prev, sig.immutable) {
            args.insert(0, prev);
        }
        let mut options = send_options(&sig, lineage)?;
        if !rest.is_empty() {
            options.chain = rest;
        }
        if let Some(m) = member {
            options.group_id = Some(m.group_id);
            options.group_index = Some(m.index);
            if m.chord.is_some() {
                options.chord = m.chord;
            }
        }
        let id = self.producer.send_task(&sig.task, args, sig.kwargs.clone(), options).await?;
        Ok(Applied::Task(id))
    }
}

/// The options of a plain signature as the producer's [`SendOptions`], with
/// the lineage's parent and root (Celery's `apply_async(parent_id=...,
/// root_id=...)` from the tracer).
pub fn send_options(sig: &Signature, lineage: &Lineage) -> Result<SendOptions, CanvasError> {
    let o = &sig.options;
    let mut options = SendOptions {
        task_id: option_str(o, "task_id"),
        queue: option_str(o, "queue"),
        exchange: option_str(o, "exchange"),
        routing_key: option_str(o, "routing_key"),
        priority: o.get("priority").and_then(Value::as_i64).and_then(|p| u8::try_from(p).ok()).or(lineage.priority),
        countdown: o
            .get("countdown")
            .and_then(Value::as_f64)
            .and_then(|s| std::time::Duration::try_from_secs_f64(s.max(0.0)).ok()),
        eta: match o.get("eta") {
            Some(Value::DateTime(d)) => Some(*d),
            Some(Value::Str(s)) => PyDateTime::parse_iso(s).ok(),
            _ => None,
        },
        expires: match o.get("expires") {
            Some(Value::DateTime(d)) => Some(Expires::At(*d)),
            Some(Value::Str(s)) => PyDateTime::parse_iso(s).ok().map(Expires::At),
            Some(v) => {
                v.as_f64().and_then(|s| std::time::Duration::try_from_secs_f64(s.max(0.0)).ok()).map(Expires::In)
            }
            None => None,
        },
        time_limit: o.get("time_limit").and_then(Value::as_f64),
        soft_time_limit: o.get("soft_time_limit").and_then(Value::as_f64),
        ignore_result: o.get("ignore_result").and_then(|v| match v {
            Value::Bool(b) => Some(*b),
            _ => None,
        }),
        shadow: option_str(o, "shadow"),
        parent_id: lineage.parent_id.clone(),
        root_id: lineage.root_id.clone(),
        group_id: option_str(o, "group_id"),
        group_index: o.get("group_index").and_then(Value::as_i64),
        replaced_task_nesting: o.get("replaced_task_nesting").and_then(Value::as_i64),
        ..SendOptions::default()
    };
    if let Some(Value::Map(headers)) = o.get("headers") {
        options.headers = headers.clone();
    }
    options.chain = list_option(sig, "chain")?;
    options.link = list_option(sig, "link")?;
    options.link_error = list_option(sig, "link_error")?;
    if let Some(chord @ Value::Map(_)) = o.get("chord") {
        options.chord = Some(Signature::from_value(chord).map_err(|e| invalid(sig, e.to_string()))?);
    }
    // Stamps: `stamped_headers` names the option keys that are stamps.
    if let Some(Value::List(names)) = o.get("stamped_headers") {
        for name in names.iter().filter_map(Value::as_str) {
            if let Some(v) = o.get(name) {
                options.stamps.insert(name.to_owned(), v.clone());
            }
        }
    }
    Ok(options)
}

/// Gives every task, group and chord body in `sig` a `task_id` where it has
/// none (Celery's `freeze`), so that applying it again after a failed
/// attempt sends the same ids.
pub fn freeze(sig: &mut Signature) {
    // A chain's id is its last task's.
    if sig.kind() != SignatureKind::Chain && !sig.options.contains_key("task_id") {
        sig.options.insert("task_id".into(), Value::Str(uuid::Uuid::new_v4().to_string()));
    }
    let nested: &[&str] = match sig.kind() {
        SignatureKind::Group | SignatureKind::Chain => &["tasks"],
        SignatureKind::Chord => &["header", "body"],
        SignatureKind::Task | SignatureKind::Other => &[],
    };
    for key in nested {
        match sig.kwargs.get_mut(*key) {
            Some(Value::List(items)) => items.iter_mut().for_each(freeze_value),
            Some(v @ Value::Map(_)) => freeze_value(v),
            _ => {}
        }
    }
}

fn freeze_value(value: &mut Value) {
    if let Ok(mut sig) = Signature::from_value(value) {
        freeze(&mut sig);
        *value = sig.to_value();
    }
}

/// How many header parts a signature counts for in a chord (`_chord._descend`).
pub fn descend(sig: &Signature) -> u64 {
    match sig.kind() {
        SignatureKind::Group => sig_members(sig, "tasks").map(|m| m.iter().map(descend).sum()).unwrap_or(0),
        SignatureKind::Chain => sig_members(sig, "tasks")
            .map(|steps| steps.iter().rev().map(descend).find(|n| *n > 0).unwrap_or(0))
            .unwrap_or(0),
        SignatureKind::Chord => match sig.kwargs.get("body").map(Signature::from_value) {
            Some(Ok(body)) => descend(&body),
            _ => 0,
        },
        SignatureKind::Task | SignatureKind::Other => 1,
    }
}

/// Nested groups unrolled, each task with its index in its own group (so
/// `group(group(a, b), c)` gives indexes 0, 1, 1, as Celery's `_prepared`).
fn flatten(members: Vec<Signature>) -> Result<Vec<(Signature, i64)>, CanvasError> {
    let mut out = Vec::with_capacity(members.len());
    for (index, member) in members.into_iter().enumerate() {
        if member.kind() == SignatureKind::Group {
            let inner = sig_members(&member, "tasks")?;
            out.extend(flatten(inner)?);
        } else {
            out.push((member, i64::try_from(index).unwrap_or(i64::MAX)));
        }
    }
    Ok(out)
}

/// A chain's own options spread over its steps: links to the last step,
/// error links and routing to every step that has none.
fn spread_chain_options(chain: &Signature, steps: &mut [Signature]) {
    let Some(last) = steps.len().checked_sub(1) else { return };
    for (key, value) in &chain.options {
        match key.as_str() {
            "link" => {
                if let Some(step) = steps.get_mut(last) {
                    step.options.entry(key.clone()).or_insert_with(|| value.clone());
                }
            }
            "task_id" => {
                // A frozen chain's id is its last task's.
                if let Some(step) = steps.get_mut(last) {
                    step.options.entry(key.clone()).or_insert_with(|| value.clone());
                }
            }
            "link_error" | "queue" | "exchange" | "routing_key" | "priority" | "stamped_headers" => {
                for step in steps.iter_mut() {
                    step.options.entry(key.clone()).or_insert_with(|| value.clone());
                }
            }
            _ => {}
        }
    }
}

fn group_id(sig: &Signature) -> Option<String> {
    option_str(&sig.options, "task_id")
}

fn option_str(options: &Map, key: &str) -> Option<String> {
    options.get(key).and_then(Value::as_str).map(str::to_owned)
}

fn invalid(sig: &Signature, reason: String) -> CanvasError {
    CanvasError::Invalid { task: sig.task.clone(), reason }
}

fn parse_all(sig: &Signature, items: &[Value]) -> Result<Vec<Signature>, CanvasError> {
    items.iter().map(|v| Signature::from_value(v).map_err(|e| invalid(sig, e.to_string()))).collect()
}

/// The signatures in `kwargs[key]` (a group's or chain's `tasks`).
fn sig_members(sig: &Signature, key: &str) -> Result<Vec<Signature>, CanvasError> {
    match sig.kwargs.get(key) {
        Some(Value::List(items)) => parse_all(sig, items),
        Some(Value::Null) | None => Ok(Vec::new()),
        Some(other) => Err(invalid(sig, format!("{key} is a {}, not a list", other.type_name()))),
    }
}

/// The signatures under `options[key]`: one, a list, or none.
fn list_option(sig: &Signature, key: &str) -> Result<Vec<Signature>, CanvasError> {
    match sig.options.get(key) {
        Some(Value::List(items)) => parse_all(sig, items),
        Some(v @ Value::Map(_)) => Ok(vec![Signature::from_value(v).map_err(|e| invalid(sig, e.to_string()))?]),
        _ => Ok(Vec::new()),
    }
}

fn set_list(options: &mut Map, key: &str, sigs: &[Signature]) {
    options.insert(key.into(), Value::List(sigs.iter().map(Signature::to_value).collect()));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(name: &str) -> Signature {
        Signature::new(name)
    }

    fn canvas(kind: &str, key: &str, members: Vec<Signature>) -> Signature {
        let mut sig = Signature::new(format!("celery.{kind}"));
        sig.subtask_type = Some(kind.into());
        sig.kwargs.insert(key.into(), Value::List(members.iter().map(Signature::to_value).collect()));
        sig
    }

    #[test]
    fn chord_sizes_count_as_celery_does() {
        assert_eq!(descend(&task("a")), 1);
        assert_eq!(descend(&canvas("group", "tasks", vec![task("a"), task("b")])), 2);
        // A chain counts as its last non-empty step.
        let chain = canvas("chain", "tasks", vec![task("a"), canvas("group", "tasks", vec![task("b"), task("c")])]);
        assert_eq!(descend(&chain), 2);
        assert_eq!(descend(&canvas("chain", "tasks", vec![])), 0);
    }

    #[test]
    fn nested_groups_flatten_with_inner_indexes() {
        let nested = canvas("group", "tasks", vec![task("a"), task("b")]);
        let flat = flatten(vec![nested, task("c")]).unwrap();
        let got: Vec<(String, i64)> = flat.into_iter().map(|(s, i)| (s.task, i)).collect();
        assert_eq!(got, [("a".into(), 0), ("b".into(), 1), ("c".into(), 1)]);
    }
}
