//! Celery 5.7's canvas algorithms, on an owned tree of signatures: how
//! `chain(...)`, `group(...)`, `chord(...)` and `|` build a canvas, how
//! `freeze` gives it its ids, and what `apply_async` sends for it.
//!
//! The functions follow `celery.canvas` step by step (the same option keys, set
//! in the same order, the same ids frozen at the same moments), because the
//! messages must be the ones Celery sends byte for byte: the options of every
//! signature embedded in a message (`chain`, `chord`, `link`) are written as
//! they stand when it is sent. Planning is pure: [`Engine`] records what to
//! send and which chord sizes to write ([`Op`]) and the results it returns,
//! and the caller performs the operations in order.
//!
//! Python shares signature objects where this tree holds copies. Where the
//! sharing shows on the wire it is reproduced: a chord's header parts carry
//! the body as it is after the body was frozen, and freezing a chain in place
//! (a chord body) updates the chain's own steps.

use std::collections::VecDeque;

use celeriac_protocol::result::ResultTuple;
use celeriac_protocol::signature::SignatureKind;
use celeriac_protocol::{Map, Signature as WireSignature, Value};

/// Task name of a group signature.
pub(crate) const GROUP_TASK: &str = "celery.group";
/// Task name of a chain signature.
pub(crate) const CHAIN_TASK: &str = "celery.chain";
/// Task name of a chord signature.
pub(crate) const CHORD_TASK: &str = "celery.chord";

/// Options a signature keeps when apply_async or clone offers another value
/// (`Signature._IMMUTABLE_OPTIONS`); its stamps are kept too.
const IMMUTABLE_OPTIONS: [&str; 2] = ["group_id", "stamped_headers"];

/// Options of a chain that `chain.run` takes itself instead of passing them to
/// the chain's first task (`_CHAIN_RUN_OPTIONS`).
const CHAIN_RUN_OPTIONS: [&str; 8] =
    ["chord", "group_id", "group_index", "link", "link_error", "parent_id", "root_id", "task_id"];

/// A signature of any canvas type.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Node {
    /// The task name (`celery.group`, `celery.chain`, `celery.chord` for canvases).
    pub(crate) task: String,
    /// Positional arguments.
    pub(crate) args: Vec<Value>,
    /// Keyword arguments: the task's; for a chord the keys beside `header`
    /// and `body` (`{"kwargs": {...}}`); unused for groups and chains.
    pub(crate) kwargs: Map,
    /// Execution options, in the order they were set.
    pub(crate) options: Map,
    /// Whether a parent's result is not prepended.
    pub(crate) immutable: bool,
    /// What the signature is.
    pub(crate) kind: Kind,
    /// Keys of the dict beyond Celery's six, kept as read.
    pub(crate) extra: Map,
}

/// The canvas type of a [`Node`], with its members.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Kind {
    /// A single task.
    Task,
    /// `group(...)`.
    Group(Vec<Node>),
    /// `chain(...)`.
    Chain(Vec<Node>),
    /// `chord(header, body)`.
    Chord {
        /// The header: a list until the chord is frozen, then a group.
        header: Header,
        /// The body.
        body: Option<Box<Node>>,
    },
    /// Another `subtask_type` (`chunks`, `xmap`, ...), kept as read and sent
    /// as a task.
    Other(String),
}

/// A chord's header.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Header {
    /// A list of signatures (as built, or after a clone).
    List(Vec<Node>),
    /// A group signature (once frozen or applied).
    Group(Box<Node>),
}

impl Header {
    fn tasks(&self) -> &[Node] {
        match self {
            Header::List(tasks) => tasks,
            Header::Group(group) => group.members(),
        }
    }
}

/// What applying a canvas does, in order.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Op {
    /// Send one task message: `app.send_task(task, args, kwargs, **options)`.
    Send {
        /// Task name.
        task: String,
        /// Positional arguments.
        args: Vec<Value>,
        /// Keyword arguments.
        kwargs: Map,
        /// `send_task`'s keyword arguments (`task_id` always set).
        options: Map,
    },
    /// `backend.set_chord_size(group_id, size)`.
    ChordSize {
        /// The chord's group id.
        group_id: String,
        /// Header parts to wait for.
        size: u64,
    },
    /// `backend.apply_chord(header)`: saves the header when a part is a group.
    ApplyChord {
        /// The header's group result.
        header: ResultTuple,
    },
}

/// An index into the engine's results.
pub(crate) type R = usize;

/// A result as Celery's canvas code builds it: an `AsyncResult` or a
/// `GroupResult`, with its parent (set as the canvas is frozen).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Res {
    /// Task or group id.
    pub(crate) id: String,
    /// A group's members; `None` for a task.
    pub(crate) members: Option<Vec<R>>,
    /// The parent result.
    pub(crate) parent: Option<R>,
}

/// A planning error: a canvas Celery refuses to apply.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Refused(pub(crate) String);

/// What `freeze` is given (`Signature.freeze`'s keyword arguments).
#[derive(Clone, Debug, Default)]
pub(crate) struct Freeze {
    pub(crate) id: Option<String>,
    pub(crate) group_id: Option<String>,
    pub(crate) chord: Option<Value>,
    pub(crate) root_id: Option<String>,
    pub(crate) parent_id: Option<String>,
    pub(crate) group_index: Option<i64>,
}

/// Plans canvases: records operations and results.
#[derive(Debug)]
pub(crate) struct Engine {
    /// The app's `thread_oid`: the `reply_to` frozen into signatures.
    reply_to: String,
    /// Every result built, by index.
    pub(crate) results: Vec<Res>,
    /// What to do, in order.
    pub(crate) ops: Vec<Op>,
    /// Placeholder ids for chord bodies being frozen (see `freeze_chord`).
    refs: u64,
    /// What a task applying this canvas records as its children, in order
    /// (Celery's `add_trail`: each message sent with `add_to_parent`, each
    /// group applied with it).
    pub(crate) trail: Vec<R>,
    /// How much the plan may produce.
    limits: PlanLimits,
    /// Approximate bytes produced and copied so far.
    used: usize,
    /// Why the plan went over its limits: nothing more is produced, and
    /// applying refuses the canvas.
    over: Option<String>,
    /// Where new ids come from.
    ids: Ids,
}

/// Where the ids a plan gives to signatures without one come from.
#[derive(Clone, Debug)]
pub(crate) enum Ids {
    /// A random UUID each (Celery's `uuid()`).
    Random,
    /// The `n`-th id of a plan is a name-based UUID (v5) of a seed and `n`:
    /// planning is pure, so planning the same canvas with the same seed again
    /// (a worker applying a redelivered message's callbacks) gives the same ids.
    Derived {
        /// UUID v5 of the seed, the namespace of this plan's ids.
        namespace: uuid::Uuid,
        /// How many ids were made so far.
        made: u64,
    },
}

/// The namespace of seeded plan ids (a fixed, random UUID of celeriac's).
const PLAN_ID_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x5c1e_7a3b_90d2_4f6e_8a41_2b9c_d0e7_f316);

impl Ids {
    /// Ids derived from `seed` (see [`Ids::Derived`]).
    pub(crate) fn derived(seed: &str) -> Ids {
        Ids::Derived { namespace: uuid::Uuid::new_v5(&PLAN_ID_NAMESPACE, seed.as_bytes()), made: 0 }
    }

    /// The next id, in the canonical hyphenated form Celery uses.
    fn next(&mut self) -> String {
        match self {
            Ids::Random => uuid::Uuid::new_v4().to_string(),
            Ids::Derived { namespace, made } => {
                *made += 1;
                uuid::Uuid::new_v5(namespace, &made.to_be_bytes()).to_string()
            }
        }
    }
}

/// A string option read as Python's truthiness does: missing, null and `""`
/// are nothing.
fn opt_str(options: &Map, key: &str) -> Option<String> {
    match options.get(key) {
        Some(Value::Str(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

/// A present, non-null option.
fn opt_some(options: &Map, key: &str) -> Option<Value> {
    options.get(key).filter(|v| !v.is_null()).cloned()
}

fn str_value(s: &Option<String>) -> Value {
    s.clone().map_or(Value::Null, Value::Str)
}

/// Refuses a `link` or `link_error` in `options` (of `task`) that is not a
/// signature, or holds one that is not (see [`Node::check_links`]); `None`
/// entries are nothing, as when the message is sent.
pub(crate) fn check_link_options(task: &str, options: &Map, depth: usize) -> Result<(), Refused> {
    for key in ["link", "link_error"] {
        for (i, entry) in maybe_list(options.get(key).cloned()).iter().enumerate() {
            if entry.is_null() {
                continue;
            }
            let sig = Node::from_value(entry).map_err(|e| {
                Refused(format!(
                    "{key} entry {i} of {task} is not a signature ({}): {e}; give a signature dict, as Celery requires",
                    entry.type_name()
                ))
            })?;
            sig.check_links(depth + 1)?;
        }
    }
    Ok(())
}

/// `maybe_list`: a list as is, `None` as nothing, anything else as a list of one.
fn maybe_list(value: Option<Value>) -> Vec<Value> {
    match value {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::List(items)) => items,
        Some(other) => vec![other],
    }
}

/// How much one plan may produce: what keeps a small hostile canvas (chords
/// nested in chord headers, each part carrying a copy of the body) from
/// growing into gigabytes before anything is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanLimits {
    /// The most the plan may hold and copy while it is built, in approximate
    /// encoded bytes (the messages, and the chord bodies copied into header
    /// parts).
    pub total_bytes: usize,
    /// The largest single message, in approximate encoded bytes (a worker
    /// sets its `worker_max_message_size`: a bigger one would be refused by
    /// every worker that receives it).
    pub message_bytes: usize,
}

impl Default for PlanLimits {
    fn default() -> PlanLimits {
        PlanLimits { total_bytes: 128 * 1024 * 1024, message_bytes: 64 * 1024 * 1024 }
    }
}

/// The approximate JSON size of `value` in bytes, counted up to a little past
/// `limit` (what is over the limit is not walked).
pub(crate) fn weight(value: &Value, limit: usize) -> usize {
    let mut total = 0usize;
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        if total > limit {
            break;
        }
        total = total.saturating_add(match v {
            Value::Null | Value::Bool(_) => 5,
            Value::Int(_) | Value::Float(_) => 20,
            Value::BigInt(b) => b.as_str().len(),
            Value::Decimal(d) => d.as_str().len() + 2,
            Value::Str(s) => s.len() + 3,
            Value::Bytes(b) => b.len().saturating_mul(4) / 3 + 4,
            Value::List(items) => {
                stack.extend(items.iter());
                2 + items.len()
            }
            Value::Map(map) => {
                stack.extend(map.values());
                map.keys().fold(2usize, |n, k| n.saturating_add(k.len() + 4))
            }
            Value::DateTime(_) | Value::Date(_) | Value::Time(_) | Value::Uuid(_) => 40,
        });
    }
    total
}

/// The approximate size of a message's arguments and options.
fn message_weight(args: &[Value], kwargs: &Map, options: &Map, limit: usize) -> usize {
    let list: usize = args.iter().map(|a| weight(a, limit)).fold(0, usize::saturating_add);
    let maps = [kwargs, options]
        .iter()
        .flat_map(|m| m.iter())
        .map(|(k, v)| k.len().saturating_add(weight(v, limit)))
        .fold(0, usize::saturating_add);
    list.saturating_add(maps)
}

impl Node {
    /// A plain task signature.
    pub(crate) fn task(name: impl Into<String>) -> Node {
        Node {
            task: name.into(),
            args: Vec::new(),
            kwargs: Map::new(),
            options: Map::new(),
            immutable: false,
            kind: Kind::Task,
            extra: Map::new(),
        }
    }

    /// `group(tasks, **options)`.
    pub(crate) fn group(tasks: Vec<Node>, options: Map) -> Node {
        Node { options, kind: Kind::Group(tasks), ..Node::task(GROUP_TASK) }
    }

    /// `_chain(tasks, **options)` (no folding).
    pub(crate) fn chain_of(tasks: Vec<Node>, options: Map) -> Node {
        Node { options, kind: Kind::Chain(tasks), ..Node::task(CHAIN_TASK) }
    }

    /// `chord(header, body, **options)`: the header as a list (a group or a
    /// chain gives its tasks, as `_maybe_group`).
    pub(crate) fn chord(header: Vec<Node>, body: Option<Node>, options: Map) -> Node {
        let mut kwargs = Map::new();
        kwargs.insert("kwargs".into(), Value::Map(Map::new()));
        Node {
            kwargs,
            options,
            kind: Kind::Chord { header: Header::List(header), body: body.map(Box::new) },
            ..Node::task(CHORD_TASK)
        }
    }

    /// `_maybe_group(sig)`: the list a chord header is made of.
    pub(crate) fn header_list(self) -> Vec<Node> {
        match self.kind {
            Kind::Group(tasks) | Kind::Chain(tasks) => tasks,
            _ => vec![self],
        }
    }

    /// A group's or chain's tasks (empty for other kinds).
    pub(crate) fn members(&self) -> &[Node] {
        match &self.kind {
            Kind::Group(tasks) | Kind::Chain(tasks) => tasks,
            _ => &[],
        }
    }

    fn members_mut(&mut self) -> Option<&mut Vec<Node>> {
        match &mut self.kind {
            Kind::Group(tasks) | Kind::Chain(tasks) => Some(tasks),
            _ => None,
        }
    }

    fn take_members(&mut self) -> Vec<Node> {
        self.members_mut().map(std::mem::take).unwrap_or_default()
    }

    pub(crate) fn is_group(&self) -> bool {
        matches!(self.kind, Kind::Group(_))
    }

    pub(crate) fn is_chain(&self) -> bool {
        matches!(self.kind, Kind::Chain(_))
    }

    pub(crate) fn is_chord(&self) -> bool {
        matches!(self.kind, Kind::Chord { .. })
    }

    /// `_is_empty_group`.
    fn is_empty_group(&self) -> bool {
        matches!(&self.kind, Kind::Group(tasks) if tasks.is_empty())
    }

    fn body(&self) -> Option<&Node> {
        match &self.kind {
            Kind::Chord { body, .. } => body.as_deref(),
            _ => None,
        }
    }

    fn body_mut(&mut self) -> Option<&mut Node> {
        match &mut self.kind {
            Kind::Chord { body, .. } => body.as_deref_mut(),
            _ => None,
        }
    }

    fn set_body(&mut self, new: Node) {
        if let Kind::Chord { body, .. } = &mut self.kind {
            *body = Some(Box::new(new));
        }
    }

    /// `_is_chain_led_by_task(body)`.
    fn chain_led_by_task(body: Option<&Node>) -> bool {
        match body {
            Some(Node { kind: Kind::Chain(tasks), .. }) => tasks.first().is_some_and(|t| !t.is_group()),
            _ => false,
        }
    }

    /// The signature as Celery's dict.
    pub(crate) fn to_value(&self) -> Value {
        let (subtask_type, kwargs) = match &self.kind {
            Kind::Task => (Value::Null, Value::Map(self.kwargs.clone())),
            Kind::Other(kind) => (Value::Str(kind.clone()), Value::Map(self.kwargs.clone())),
            Kind::Group(tasks) | Kind::Chain(tasks) => {
                let mut kw = Map::new();
                kw.insert("tasks".into(), Value::List(tasks.iter().map(Node::to_value).collect()));
                let kind = if self.is_group() { "group" } else { "chain" };
                (Value::Str(kind.into()), Value::Map(kw))
            }
            Kind::Chord { header, body } => {
                let mut kw = if self.kwargs.is_empty() {
                    let mut m = Map::new();
                    m.insert("kwargs".into(), Value::Map(Map::new()));
                    m
                } else {
                    self.kwargs.clone()
                };
                let header = match header {
                    Header::List(tasks) => Value::List(tasks.iter().map(Node::to_value).collect()),
                    Header::Group(group) => group.to_value(),
                };
                kw.insert("header".into(), header);
                kw.insert("body".into(), body.as_ref().map_or(Value::Null, |b| b.to_value()));
                (Value::Str("chord".into()), Value::Map(kw))
            }
        };
        let mut map = Map::with_capacity(6 + self.extra.len());
        map.insert("task".into(), Value::Str(self.task.clone()));
        map.insert("args".into(), Value::List(self.args.clone()));
        map.insert("kwargs".into(), kwargs);
        map.insert("options".into(), Value::Map(self.options.clone()));
        map.insert("subtask_type".into(), subtask_type);
        map.insert("immutable".into(), Value::Bool(self.immutable));
        for (k, v) in &self.extra {
            map.insert(k.clone(), v.clone());
        }
        Value::Map(map)
    }

    /// Reads a signature dict (`Signature.from_dict`), its members too.
    pub(crate) fn from_value(value: &Value) -> Result<Node, Refused> {
        let sig = WireSignature::from_value(value).map_err(|e| Refused(e.to_string()))?;
        Node::from_wire(sig, 0)
    }

    /// Reads a wire signature.
    pub(crate) fn from_wire(sig: WireSignature, depth: usize) -> Result<Node, Refused> {
        if depth > 64 {
            return Err(Refused("the canvas is nested more than 64 levels deep".into()));
        }
        let kind = sig.kind();
        let mut node = Node {
            task: sig.task,
            args: sig.args,
            kwargs: Map::new(),
            options: sig.options,
            immutable: sig.immutable,
            kind: Kind::Task,
            extra: sig.extra,
        };
        let mut kwargs = sig.kwargs;
        let list = |v: Option<Value>, what: &str| -> Result<Vec<Node>, Refused> {
            match v {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::List(items)) => items
                    .iter()
                    .map(|i| WireSignature::from_value(i).map_err(|e| Refused(e.to_string())))
                    .map(|s| s.and_then(|s| Node::from_wire(s, depth + 1)))
                    .collect(),
                Some(other) => Err(Refused(format!("{what} is a {}, not a list of signatures", other.type_name()))),
            }
        };
        match kind {
            SignatureKind::Task => node.kwargs = kwargs,
            SignatureKind::Other => {
                node.kind = Kind::Other(sig.subtask_type.unwrap_or_default());
                node.kwargs = kwargs;
            }
            SignatureKind::Group => node.kind = Kind::Group(list(kwargs.shift_remove("tasks"), "a group's tasks")?),
            SignatureKind::Chain => node.kind = Kind::Chain(list(kwargs.shift_remove("tasks"), "a chain's tasks")?),
            SignatureKind::Chord => {
                let header = match kwargs.shift_remove("header") {
                    Some(v @ Value::Map(_)) => {
                        let sig = WireSignature::from_value(&v).map_err(|e| Refused(e.to_string()))?;
                        Node::from_wire(sig, depth + 1)?.header_list()
                    }
                    other => list(other, "a chord's header")?,
                };
                let body = match kwargs.shift_remove("body") {
                    None | Some(Value::Null) => None,
                    Some(v) => {
                        let sig = WireSignature::from_value(&v).map_err(|e| Refused(e.to_string()))?;
                        Some(Box::new(Node::from_wire(sig, depth + 1)?))
                    }
                };
                node.kwargs = kwargs;
                node.kind = Kind::Chord { header: Header::List(header), body };
            }
        }
        Ok(node)
    }

    /// Refuses a `link` or `link_error` entry anywhere in the canvas that is
    /// not a signature: Celery raises on one when it applies the canvas,
    /// and planning would otherwise drop it silently.
    pub(crate) fn check_links(&self, depth: usize) -> Result<(), Refused> {
        if depth > 64 {
            return Err(Refused("links are nested more than 64 levels deep".into()));
        }
        check_link_options(&self.task, &self.options, depth)?;
        match &self.kind {
            Kind::Group(tasks) | Kind::Chain(tasks) => tasks.iter().try_for_each(|t| t.check_links(depth + 1)),
            Kind::Chord { header, body } => {
                header.tasks().iter().try_for_each(|t| t.check_links(depth + 1))?;
                body.as_ref().map_or(Ok(()), |b| b.check_links(depth + 1))
            }
            Kind::Task | Kind::Other(_) => Ok(()),
        }
    }

    /// The names of the options that are stamps (`stamped_headers`).
    fn stamped_names(&self) -> Vec<String> {
        match self.options.get("stamped_headers") {
            Some(Value::List(names)) => names.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
            _ => Vec::new(),
        }
    }

    /// `Signature._merge(args, kwargs, options)`.
    fn merge(&self, args: &[Value], kwargs: &Map, options: Option<&Map>, force: bool) -> (Vec<Value>, Map, Map) {
        let new_options = match options {
            Some(options) => {
                let stamps = self.stamped_names();
                let keep = |k: &str| IMMUTABLE_OPTIONS.contains(&k) || stamps.iter().any(|s| s == k);
                let mut merged = self.options.clone();
                for (k, v) in options {
                    if !keep(k) || !self.options.contains_key(k) {
                        merged.insert(k.clone(), v.clone());
                    }
                }
                merged
            }
            None => self.options.clone(),
        };
        if self.immutable && !force {
            return (self.args.clone(), self.kwargs.clone(), new_options);
        }
        let args = if args.is_empty() { self.args.clone() } else { args.iter().chain(&self.args).cloned().collect() };
        let kwargs = if kwargs.is_empty() {
            self.kwargs.clone()
        } else {
            let mut k = self.kwargs.clone();
            k.extend(kwargs.iter().map(|(a, b)| (a.clone(), b.clone())));
            k
        };
        (args, kwargs, new_options)
    }

    /// `sig.clone()`.
    pub(crate) fn clone_sig(&self) -> Node {
        self.clone_with(&[], &Map::new(), &Map::new())
    }

    /// `sig.clone(args, kwargs, **options)`, as each canvas type clones.
    pub(crate) fn clone_with(&self, args: &[Value], kwargs: &Map, opts: &Map) -> Node {
        let (args, kwargs, options) = if !args.is_empty() || !kwargs.is_empty() || !opts.is_empty() {
            self.merge(args, kwargs, Some(opts), false)
        } else {
            (self.args.clone(), self.kwargs.clone(), self.options.clone())
        };
        match &self.kind {
            Kind::Task | Kind::Other(_) => Node {
                task: self.task.clone(),
                args,
                kwargs,
                options,
                immutable: self.immutable,
                kind: self.kind.clone(),
                extra: Map::new(),
            },
            // Rebuilt from the dict: the members are the same signatures, the
            // arguments and the immutable flag are not kept.
            Kind::Group(tasks) => Node::group(tasks.clone(), options),
            Kind::Chain(tasks) => Node::chain_of(tasks.iter().map(Node::clone_sig).collect(), options),
            Kind::Chord { header, body } => {
                let header = match header {
                    Header::List(tasks) => tasks.iter().map(Node::clone_sig).collect(),
                    Header::Group(group) => group.members().to_vec(),
                };
                Node {
                    task: self.task.clone(),
                    args,
                    kwargs: self.kwargs.clone(),
                    options,
                    immutable: self.immutable,
                    kind: Kind::Chord {
                        header: Header::List(header),
                        body: body.as_ref().map(|b| Box::new(b.clone_sig())),
                    },
                    extra: Map::new(),
                }
            }
        }
    }

    /// `_clone_with_members`: a clone whose group members and chord body are
    /// clones too (what `link()` changes).
    fn clone_with_members(&self) -> Node {
        let mut sig = self.clone_sig();
        match &mut sig.kind {
            Kind::Group(tasks) => {
                for t in tasks.iter_mut() {
                    *t = t.clone_with_members();
                }
            }
            Kind::Chord { body: Some(body), .. } => **body = body.clone_with_members(),
            _ => {}
        }
        sig
    }

    /// `append_to_list_option(key, value)`: adds `value` unless it is there.
    pub(crate) fn append_to_list_option(&mut self, key: &str, value: Value) {
        self.with_list_option(key, |items| {
            if !items.contains(&value) {
                items.push(value);
            }
        });
    }

    /// `extend_list_option(key, values)`.
    fn extend_list_option(&mut self, key: &str, values: Vec<Value>) {
        self.with_list_option(key, |items| items.extend(values));
    }

    /// `_with_list_option(key)`: the option as a list (a single value becomes
    /// a list of one), changed by `f`.
    fn with_list_option(&mut self, key: &str, f: impl FnOnce(&mut Vec<Value>)) {
        let entry = self.options.entry(key.to_owned()).or_insert_with(|| Value::List(Vec::new()));
        let mut items = match std::mem::replace(entry, Value::Null) {
            Value::List(items) => items,
            single => vec![single],
        };
        f(&mut items);
        *entry = Value::List(items);
    }

    /// `sig.link(callback)`, as each canvas type links.
    pub(crate) fn link(&mut self, callback: &Node) {
        match &mut self.kind {
            Kind::Group(tasks) => {
                // The first member calls it, immutable: it does not have its
                // siblings' results.
                let mut sig = callback.clone_sig();
                sig.immutable = true;
                if let Some(first) = tasks.first_mut() {
                    first.link(&sig);
                }
            }
            Kind::Chord { body: Some(body), .. } => body.link(callback),
            _ => self.append_to_list_option("link", callback.to_value()),
        }
    }

    /// `sig.link_error(errback)`, as each canvas type links (with Celery's
    /// default `task_allow_error_cb_on_chord_header=False`).
    pub(crate) fn link_error(&mut self, errback: &Node) {
        match &mut self.kind {
            Kind::Group(tasks) => {
                for t in tasks.iter_mut() {
                    t.link_error(&errback.clone_sig());
                }
            }
            Kind::Chord { header, body } => {
                if let Header::List(tasks) = header {
                    for t in tasks.iter_mut().filter(|t| t.is_chord()) {
                        t.link_error(errback);
                    }
                }
                if let Some(body) = body {
                    body.link_error(errback);
                }
            }
            _ => self.append_to_list_option("link_error", errback.to_value()),
        }
    }

    /// `sig.stamp(**headers)` (no visitor, `append_stamps=False`): the stamps
    /// go into the options of every task, with their names in
    /// `stamped_headers`; a chord's body is not stamped, as in Celery.
    pub(crate) fn stamp(&mut self, headers: &Map) {
        self.stamp_links(headers);
        let merged = self.stamp_headers(headers, true);
        match &mut self.kind {
            Kind::Task | Kind::Other(_) => {
                for (k, v) in merged {
                    self.options.insert(k, v);
                }
            }
            Kind::Group(tasks) | Kind::Chain(tasks) => tasks.iter_mut().for_each(|t| t.stamp(&merged)),
            Kind::Chord { header, .. } => match header {
                Header::List(tasks) => tasks.iter_mut().for_each(|t| t.stamp(&merged)),
                Header::Group(group) => group.stamp(&merged),
            },
        }
    }

    /// `stamp_links`: callbacks and errbacks get the given stamps, not this
    /// signature's own.
    fn stamp_links(&mut self, headers: &Map) {
        for key in ["link", "link_error"] {
            let links = match self.options.get(key) {
                Some(v) if !v.is_null() => v.clone(),
                _ => continue,
            };
            let single = !matches!(links, Value::List(_));
            let mut stamped = Vec::new();
            for link in maybe_list(Some(links)) {
                let with = self.stamp_headers(headers, false);
                match Node::from_value(&link) {
                    Ok(mut sig) => {
                        sig.stamp(&with);
                        stamped.push(sig.to_value());
                    }
                    Err(_) => stamped.push(link),
                }
            }
            let value = match (single, stamped.len()) {
                (true, 1) => stamped.pop().unwrap_or(Value::Null),
                _ => Value::List(stamped),
            };
            self.options.insert(key.into(), value);
        }
    }

    /// `_stamp_headers`: the stamps with their names, merged with this
    /// signature's own stamps (the given values win).
    fn stamp_headers(&self, headers: &Map, self_headers: bool) -> Map {
        let mut out = headers.clone();
        if !out.contains_key("stamped_headers") {
            let names = out.keys().cloned().map(Value::Str).collect();
            out.insert("stamped_headers".into(), Value::List(names));
        }
        if self_headers {
            let mut names: Vec<String> = match out.get("stamped_headers") {
                Some(Value::List(n)) => n.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
                _ => Vec::new(),
            };
            for own in self.stamped_names() {
                if !names.contains(&own) {
                    names.push(own);
                }
            }
            for (k, v) in &self.options {
                if names.contains(k) {
                    match (out.get_mut(k), v) {
                        (Some(Value::List(mine)), Value::List(theirs)) => mine.extend(theirs.iter().cloned()),
                        (Some(_), _) => {}
                        (None, _) => {
                            out.insert(k.clone(), v.clone());
                        }
                    }
                }
            }
            out.insert("stamped_headers".into(), Value::List(names.into_iter().map(Value::Str).collect()));
        }
        out
    }

    /// `_chord._descend`: how many header parts this counts for.
    pub(crate) fn descend(&self) -> u64 {
        match &self.kind {
            Kind::Group(tasks) => tasks.iter().map(Node::descend).sum(),
            Kind::Chain(tasks) => tasks.iter().rev().map(Node::descend).find(|n| *n > 0).unwrap_or(0),
            Kind::Chord { body, .. } => body.as_ref().map_or(0, |b| b.descend()),
            Kind::Task | Kind::Other(_) => 1,
        }
    }

    /// `maybe_unroll_group`: a group of one is that one.
    fn unroll_group(self) -> (Node, bool) {
        match self.kind {
            Kind::Group(mut tasks) if tasks.len() == 1 => match tasks.pop() {
                Some(only) => (only, true),
                None => (Node::group(Vec::new(), self.options), false),
            },
            kind => (Node { kind, ..self }, false),
        }
    }

    /// `chain.unchain_tasks()`: clones of the steps, the chain's links on the
    /// last, its error links on each.
    fn unchain_tasks(&self) -> Vec<Node> {
        let mut tasks: Vec<Node> = self.members().iter().map(Node::clone_sig).collect();
        for link in maybe_list(self.options.get("link").cloned()) {
            if let (Some(last), Ok(sig)) = (tasks.last_mut(), Node::from_value(&link)) {
                last.link(&sig);
            }
        }
        for errback in maybe_list(self.options.get("link_error").cloned()) {
            if let Ok(sig) = Node::from_value(&errback) {
                for t in tasks.iter_mut() {
                    t.link_error(&sig);
                }
            }
        }
        tasks
    }

    /// `chord._unroll_body()`: `chord(h, chain(a, b, c))` as
    /// `chord(h, a), b, c`.
    fn unroll_body(&self) -> Vec<Node> {
        let mut chord = self.clone_sig();
        let Some(body) = chord.body().cloned() else { return vec![chord] };
        let mut body_tasks = body.unchain_tasks();
        if body_tasks.is_empty() {
            return vec![chord];
        }
        let first_options: Map = body
            .options
            .iter()
            .filter(|(k, _)| !CHAIN_RUN_OPTIONS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let first = body_tasks.remove(0).clone_with(&[], &Map::new(), &first_options);
        chord.set_body(first);
        let mut out = vec![chord];
        out.extend(body_tasks);
        out
    }

    /// `chain._unroll_chords()`: nested chord bodies split before freezing.
    fn unroll_chords(&mut self) {
        let mut pending: VecDeque<Node> = self.take_members().into();
        let mut tasks = Vec::new();
        while let Some(mut task) = pending.pop_front() {
            if task.is_chain() {
                task = task.clone_sig();
                task.unroll_chords();
            }
            if task.is_chord() && Node::chain_led_by_task(task.body()) {
                for t in task.unroll_body().into_iter().rev() {
                    pending.push_front(t);
                }
            } else {
                tasks.push(task);
            }
        }
        if let Some(members) = self.members_mut() {
            *members = tasks;
        }
    }

    /// `_clear_chord_option`: no chord callback on the terminal tasks.
    fn clear_chord_option(&mut self) {
        self.options.shift_remove("chord");
        match &mut self.kind {
            Kind::Group(tasks) => tasks.iter_mut().for_each(Node::clear_chord_option),
            Kind::Chain(tasks) => {
                if let Some(last) = tasks.last_mut() {
                    last.clear_chord_option();
                }
            }
            Kind::Chord { body: Some(body), .. } => body.clear_chord_option(),
            _ => {}
        }
    }

    /// `_strip_chord_header_links`: a pending chord's header parts do not
    /// carry its body (it is attached again when the header is sent).
    fn strip_chord_header_links(&mut self) {
        match &mut self.kind {
            Kind::Chord { header, body } => {
                match header {
                    Header::Group(group) => {
                        group.clear_chord_option();
                        group.strip_chord_header_links();
                    }
                    Header::List(tasks) => {
                        for t in tasks.iter_mut() {
                            t.clear_chord_option();
                            t.strip_chord_header_links();
                        }
                    }
                }
                if let Some(body) = body {
                    body.strip_chord_header_links();
                }
            }
            Kind::Group(tasks) | Kind::Chain(tasks) => tasks.iter_mut().for_each(Node::strip_chord_header_links),
            _ => {}
        }
    }

    /// How many times `value` (a placeholder) occurs in the options of this tree.
    fn count_value(&self, value: &Value) -> usize {
        let own: usize = self.options.values().map(|v| count_in(v, value)).sum();
        let nested: usize = match &self.kind {
            Kind::Group(tasks) | Kind::Chain(tasks) => tasks.iter().map(|t| t.count_value(value)).sum(),
            Kind::Chord { header, body } => {
                let header: usize = match header {
                    Header::List(tasks) => tasks.iter().map(|t| t.count_value(value)).sum(),
                    Header::Group(group) => group.count_value(value),
                };
                header + body.as_ref().map_or(0, |b| b.count_value(value))
            }
            _ => 0,
        };
        own + nested
    }

    /// Replaces every occurrence of `from` (a placeholder) in the options of
    /// this tree with `to`.
    fn replace_value(&mut self, from: &Value, to: &Value) {
        for v in self.options.values_mut() {
            replace_in(v, from, to);
        }
        match &mut self.kind {
            Kind::Group(tasks) | Kind::Chain(tasks) => tasks.iter_mut().for_each(|t| t.replace_value(from, to)),
            Kind::Chord { header, body } => {
                match header {
                    Header::List(tasks) => tasks.iter_mut().for_each(|t| t.replace_value(from, to)),
                    Header::Group(group) => group.replace_value(from, to),
                }
                if let Some(body) = body {
                    body.replace_value(from, to);
                }
            }
            _ => {}
        }
    }
}

fn count_in(v: &Value, value: &Value) -> usize {
    if v == value {
        return 1;
    }
    match v {
        Value::List(items) => items.iter().map(|i| count_in(i, value)).sum(),
        Value::Map(map) => map.values().map(|i| count_in(i, value)).sum(),
        _ => 0,
    }
}

fn replace_in(v: &mut Value, from: &Value, to: &Value) {
    if v == from {
        *v = to.clone();
        return;
    }
    match v {
        Value::List(items) => items.iter_mut().for_each(|i| replace_in(i, from, to)),
        Value::Map(map) => map.values_mut().for_each(|i| replace_in(i, from, to)),
        _ => {}
    }
}

// ---------------------------------------------------------------------------
// Building: `|`, `chain(...)`.

/// `a | b`, as Celery's `__or__` of `a`'s canvas type.
pub(crate) fn or(a: Node, b: Node) -> Node {
    match &a.kind {
        Kind::Chain(_) => chain_or(a, b),
        Kind::Group(_) => {
            if b.is_empty_group() {
                a
            } else {
                Node::chord(a.header_list(), Some(b), Map::new())
            }
        }
        Kind::Chord { .. } => {
            if !b.is_group() && !b.is_chain() {
                let mut sig = a.clone_sig();
                let body = sig.body().cloned();
                sig.set_body(match body {
                    Some(body) => or(body, b),
                    None => b,
                });
                sig
            } else if b.is_group() && b.members().len() == 1 {
                let (b, _) = b.unroll_group();
                let mut sig = a.clone_sig();
                let body = sig.body().cloned();
                sig.set_body(match body {
                    Some(body) => or(body, b),
                    None => b,
                });
                sig
            } else {
                task_or(a, b)
            }
        }
        Kind::Task | Kind::Other(_) => task_or(a, b),
    }
}

/// `Signature.__or__`.
fn task_or(a: Node, b: Node) -> Node {
    match &b.kind {
        Kind::Chain(_) => {
            let mut tasks = vec![a];
            tasks.extend(b.unchain_tasks());
            Node::chain_of(tasks, Map::new())
        }
        Kind::Group(_) => {
            let (b, _) = b.unroll_group();
            Node::chain_of(vec![a, b], Map::new())
        }
        _ => Node::chain_of(vec![a, b], Map::new()),
    }
}

/// `_chain.__or__`.
fn chain_or(a: Node, b: Node) -> Node {
    if b.is_empty_group() {
        return a;
    }
    if b.is_group() {
        let (b, unrolled) = b.unroll_group();
        if unrolled || !b.is_group() {
            return chain_or(a, b);
        }
        let mut tasks = a.unchain_tasks();
        let Some(last) = tasks.last_mut() else { return b };
        if last.is_chord() {
            let body = last.body().cloned();
            last.set_body(match body {
                Some(body) => or(body, b),
                None => b,
            });
            return Node::chain_of(tasks, Map::new());
        }
        tasks.push(b);
        return Node::chain_of(tasks, Map::new());
    }
    if b.is_chain() {
        return b.unchain_tasks().into_iter().fold(a, chain_or);
    }
    let last_is_group = a.members().last().is_some_and(Node::is_group);
    let last_is_chord = a.members().last().is_some_and(Node::is_chord);
    if last_is_group {
        let mut sig = a.clone_sig();
        if let Some(tasks) = sig.members_mut() {
            if let Some(last) = tasks.pop() {
                tasks.push(Node::chord(last.header_list(), Some(b), Map::new()));
            }
            let n = tasks.len();
            if n > 1 && tasks[n - 2].is_chord() {
                if let Some(chord) = tasks.pop() {
                    if let Some(prev) = tasks.last_mut() {
                        let body = prev.body().cloned();
                        prev.set_body(match body {
                            Some(body) => or(body, chord),
                            None => chord,
                        });
                    }
                }
            }
        }
        sig
    } else if last_is_chord && !b.is_chord() {
        let mut sig = a.clone_sig();
        if let Some(last) = sig.members_mut().and_then(|t| t.last_mut()) {
            let body = last.body().cloned();
            last.set_body(match body {
                Some(body) => or(body, b),
                None => b,
            });
        }
        sig
    } else {
        let mut tasks = a.unchain_tasks();
        tasks.push(b);
        Node::chain_of(tasks, Map::new())
    }
}

/// What folding a step into a chain gave: still the steps, or something else.
enum Folded {
    Steps,
    Other(Box<Node>),
}

/// `_merge_chain_step`: adds `other` to `steps` by `_chain.__or__`'s rules.
fn merge_chain_step(steps: &mut Vec<Node>, other: Node, clone_other: bool) -> Folded {
    if other.is_empty_group() {
        return Folded::Steps;
    }
    if other.is_group() {
        let (other, unrolled) = other.unroll_group();
        if unrolled || !other.is_group() {
            return merge_chain_step(steps, other, clone_other);
        }
        let Some(last) = steps.last_mut() else { return Folded::Other(Box::new(other)) };
        if last.is_chord() {
            let body = last.body().cloned();
            last.set_body(match body {
                Some(body) => or(body, other),
                None => other,
            });
            return Folded::Steps;
        }
        steps.push(if clone_other { other.clone_sig() } else { other });
        return Folded::Steps;
    }
    if other.is_chain() {
        let inner = other.unchain_tasks();
        let n = inner.len();
        let mut remaining = inner.into_iter().enumerate();
        while let Some((position, task)) = remaining.next() {
            if let Folded::Other(result) = merge_chain_step(steps, task, clone_other || position + 1 != n) {
                return Folded::Other(Box::new(remaining.map(|(_, t)| t).fold(*result, or)));
            }
        }
        return Folded::Steps;
    }
    match steps.last_mut() {
        Some(last) if last.is_group() => {
            let group = std::mem::replace(last, Node::task(""));
            *last =
                Node::chord(group.header_list(), Some(if clone_other { other.clone_sig() } else { other }), Map::new());
        }
        Some(last) if last.is_chord() && !other.is_chord() => {
            let body = last.body().cloned();
            last.set_body(match body {
                Some(body) => or(body, other),
                None => other,
            });
        }
        _ => steps.push(if clone_other { other.clone_sig() } else { other }),
    }
    Folded::Steps
}

/// `chain(tasks)`: folds the tasks as `a | b | c` does (`_fold_chain`). The
/// result may be a chain, a chord, a group or a single task.
pub(crate) fn fold_chain(tasks: Vec<Node>) -> Node {
    let n = tasks.len();
    let mut steps = Vec::new();
    let mut remaining = tasks.into_iter().enumerate();
    while let Some((position, task)) = remaining.next() {
        if let Folded::Other(result) = merge_chain_step(&mut steps, task, position + 1 != n) {
            return remaining.map(|(_, t)| t).fold(*result, or);
        }
    }
    let last = steps.pop();
    let mut out: Vec<Node> = steps.iter().map(Node::clone_sig).collect();
    out.extend(last);
    Node::chain_of(out, Map::new())
}

// ---------------------------------------------------------------------------
// Freezing and applying.

/// One step of a chain being prepared: the signature, and where it came from
/// in the chain's own steps (to write a frozen step back, as Python freezes
/// the chain's signatures in place).
#[derive(Debug)]
struct Step {
    node: Node,
    origin: Option<Vec<usize>>,
    /// For a group turned into a chord: where the group and the body were.
    upgraded: Option<(Origin, Origin)>,
}

/// Where a step sits in the chain's own steps (indexes down the tree), if
/// it is one of them.
type Origin = Option<Vec<usize>>;

impl Step {
    fn at(node: Node, origin: Option<Vec<usize>>) -> Step {
        Step { node, origin, upgraded: None }
    }
}

fn child(origin: &Option<Vec<usize>>, i: usize) -> Option<Vec<usize>> {
    origin.as_ref().map(|o| o.iter().copied().chain([i]).collect())
}

/// The node at `path` in a chain's steps (through nested chains and groups).
fn node_at<'a>(tasks: &'a mut [Node], path: &[usize]) -> Option<&'a mut Node> {
    let (first, rest) = path.split_first()?;
    let node = tasks.get_mut(*first)?;
    if rest.is_empty() {
        return Some(node);
    }
    node_at(node.members_mut()?, rest)
}

/// What `prepare_steps` is given beside the tasks.
#[derive(Clone, Debug, Default)]
struct Prepare {
    args: Vec<Value>,
    kwargs: Map,
    root_id: Option<String>,
    link_error: Vec<Value>,
    last_task_id: Option<String>,
    group_id: Option<String>,
    chord_body: Option<Value>,
    clone: bool,
    group_index: Option<i64>,
}

impl Engine {
    /// An engine freezing `reply_to` into signatures (the app's `thread_oid`).
    pub(crate) fn new(reply_to: impl Into<String>) -> Engine {
        Engine::with_limits(reply_to, PlanLimits::default())
    }

    /// An engine that refuses to produce more than `limits` allow.
    pub(crate) fn with_limits(reply_to: impl Into<String>, limits: PlanLimits) -> Engine {
        Engine {
            reply_to: reply_to.into(),
            results: Vec::new(),
            ops: Vec::new(),
            refs: 0,
            trail: Vec::new(),
            limits,
            used: 0,
            over: None,
            ids: Ids::Random,
        }
    }

    /// Makes the ids this plan gives from `ids` instead of at random.
    pub(crate) fn with_ids(mut self, ids: Ids) -> Engine {
        self.ids = ids;
        self
    }

    /// A new id for a signature that has none.
    pub(crate) fn new_id(&mut self) -> String {
        self.ids.next()
    }

    /// Why the plan went over its limits, if it did.
    pub(crate) fn over_limits(&self) -> Option<&str> {
        self.over.as_deref()
    }

    /// Counts `bytes` more produced (`what` names them for the error);
    /// false once the plan is over its total.
    fn charge(&mut self, bytes: usize, what: &str) -> bool {
        if self.over.is_some() {
            return false;
        }
        self.used = self.used.saturating_add(bytes);
        if self.used > self.limits.total_bytes {
            self.over = Some(format!(
                "applying this canvas would produce more than {} bytes ({what}): \
                 chord bodies are copied into every header part, so nested chords grow fast; \
                 make the canvas smaller or flatter",
                self.limits.total_bytes
            ));
            return false;
        }
        true
    }

    /// The refusal for a plan over its limits.
    fn refused(&self) -> Result<(), Refused> {
        match &self.over {
            Some(why) => Err(Refused(why.clone())),
            None => Ok(()),
        }
    }

    fn task_result(&mut self, id: String) -> R {
        self.results.push(Res { id, members: None, parent: None });
        self.results.len() - 1
    }

    fn group_result(&mut self, id: String, members: Vec<R>) -> R {
        self.results.push(Res { id, members: Some(members), parent: None });
        self.results.len() - 1
    }

    fn res(&self, r: R) -> Option<&Res> {
        self.results.get(r)
    }

    fn parent(&self, r: R) -> Option<R> {
        self.res(r).and_then(|x| x.parent)
    }

    fn set_parent(&mut self, r: R, parent: Option<R>) {
        if let Some(x) = self.results.get_mut(r) {
            x.parent = parent;
        }
    }

    fn id_of(&self, r: R) -> String {
        self.res(r).map(|x| x.id.clone()).unwrap_or_default()
    }

    /// The result as `as_tuple()` gives it.
    pub(crate) fn tuple(&self, r: R) -> ResultTuple {
        self.tuple_at(r, 0)
    }

    fn tuple_at(&self, r: R, depth: usize) -> ResultTuple {
        let Some(res) = self.res(r) else { return ResultTuple::task("") };
        let mut t = match (&res.members, depth < 64) {
            (Some(members), true) => {
                ResultTuple::group(&res.id, members.iter().map(|m| self.tuple_at(*m, depth + 1)).collect())
            }
            (Some(_), false) => ResultTuple::group(&res.id, Vec::new()),
            (None, _) => ResultTuple::task(&res.id),
        };
        if let (Some(p), true) = (res.parent, depth < 64) {
            t = t.with_parent(self.tuple_at(p, depth + 1));
        }
        t
    }

    /// `sig.freeze(...)`, as each canvas type freezes.
    pub(crate) fn freeze(&mut self, node: &mut Node, f: Freeze) -> R {
        if self.over.is_some() {
            // Refused anyway: nothing more is built.
            return self.task_result(String::new());
        }
        match node.kind {
            Kind::Task | Kind::Other(_) => self.freeze_sig(node, f),
            Kind::Group(_) => {
                let (gid, results) = self.freeze_group_tasks(node, &f);
                self.group_result(gid, results)
            }
            Kind::Chain(_) => self.freeze_chain(node, f),
            Kind::Chord { .. } => self.freeze_chord(node, f),
        }
    }

    /// `Signature.freeze`.
    fn freeze_sig(&mut self, node: &mut Node, f: Freeze) -> R {
        let o = &mut node.options;
        let tid = match o.get("task_id") {
            Some(Value::Str(id)) => id.clone(),
            Some(_) => String::new(),
            None => {
                let id = match f.id {
                    Some(id) => id,
                    None => self.new_id(),
                };
                o.insert("task_id".into(), Value::Str(id.clone()));
                id
            }
        };
        if let Some(root) = f.root_id {
            o.insert("root_id".into(), Value::Str(root));
        }
        if let Some(parent) = f.parent_id {
            o.insert("parent_id".into(), Value::Str(parent));
        }
        if !o.contains_key("reply_to") {
            o.insert("reply_to".into(), Value::Str(self.reply_to.clone()));
        }
        if let (Some(gid), false) = (f.group_id, o.contains_key("group_id")) {
            o.insert("group_id".into(), Value::Str(gid));
        }
        if let Some(chord) = f.chord.filter(Value::is_truthy) {
            o.insert("chord".into(), chord);
        }
        if let Some(index) = f.group_index {
            o.insert("group_index".into(), Value::Int(index));
        }
        self.task_result(tid)
    }

    /// `group._freeze_group_tasks`: the group's id and its flattened members,
    /// each frozen with the group's membership.
    fn freeze_group_tasks(&mut self, node: &mut Node, f: &Freeze) -> (String, Vec<R>) {
        let o = &mut node.options;
        let gid = match opt_str(o, "task_id") {
            Some(id) => id,
            None => {
                let id = self.new_id();
                o.insert("task_id".into(), Value::Str(id.clone()));
                id
            }
        };
        if let Some(group_id) = &f.group_id {
            o.insert("group_id".into(), Value::Str(group_id.clone()));
        }
        if let Some(chord) = f.chord.clone().filter(Value::is_truthy) {
            o.insert("chord".into(), chord);
        }
        if let Some(index) = f.group_index {
            o.insert("group_index".into(), Value::Int(index));
        }
        // `setdefault`: a key already there (even null) wins.
        o.entry("root_id".to_owned()).or_insert_with(|| str_value(&f.root_id));
        o.entry("parent_id".to_owned()).or_insert_with(|| str_value(&f.parent_id));
        let root_id = opt_str(o, "root_id");
        let parent_id = opt_str(o, "parent_id");
        // `_freeze_unroll`: nested groups are flattened (their members pushed
        // to the front, so in reverse), empty chains dropped.
        let mut stack: VecDeque<Node> = node.take_members().into();
        let mut new_tasks = Vec::new();
        let mut results = Vec::new();
        let mut index = 0;
        // Each member gets a copy of the chord body.
        let chord_weight = f.chord.as_ref().map_or(0, |c| weight(c, self.limits.total_bytes));
        while let Some(task) = stack.pop_front() {
            if !self.charge(chord_weight, "chord bodies copied into header parts") {
                break;
            }
            let mut task = task.clone_sig();
            match &task.kind {
                Kind::Group(_) => {
                    for t in task.take_members() {
                        stack.push_front(t);
                    }
                }
                Kind::Chain(tasks) if tasks.is_empty() => {}
                _ => {
                    let r = self.freeze(
                        &mut task,
                        Freeze {
                            id: None,
                            group_id: f.group_id.clone(),
                            chord: f.chord.clone(),
                            root_id: root_id.clone(),
                            parent_id: parent_id.clone(),
                            group_index: Some(index),
                        },
                    );
                    new_tasks.push(task);
                    results.push(r);
                    index += 1;
                }
            }
        }
        if let Some(members) = node.members_mut() {
            *members = new_tasks;
        }
        (gid, results)
    }

    /// `chain.freeze`: the steps frozen in place; the chain's id is its last
    /// task's.
    fn freeze_chain(&mut self, node: &mut Node, f: Freeze) -> R {
        let mut tasks = node.take_members();
        let prepare = Prepare {
            args: node.args.clone(),
            root_id: f.root_id,
            last_task_id: f.id.clone(),
            group_id: f.group_id,
            chord_body: f.chord,
            clone: false,
            group_index: f.group_index,
            ..Prepare::default()
        };
        let (steps, results) = self.prepare_steps(tasks.clone(), prepare);
        // Python froze the chain's own signatures: write them back.
        for step in steps {
            if let Some((group_at, body_at)) = &step.upgraded {
                if let (Some(path), Kind::Chord { header, body }) = (group_at, &step.node.kind) {
                    if let Some(group) = node_at(&mut tasks, path) {
                        if let Some(members) = group.members_mut() {
                            *members = header.tasks().to_vec();
                        }
                    }
                    if let (Some(path), Some(body)) = (body_at, body) {
                        if let Some(slot) = node_at(&mut tasks, path) {
                            *slot = (**body).clone();
                        }
                    }
                }
                continue;
            }
            if let Some(path) = &step.origin {
                if let Some(slot) = node_at(&mut tasks, path) {
                    *slot = step.node;
                }
            }
        }
        if let Some(members) = node.members_mut() {
            *members = tasks;
        }
        let id = results.first().map(|r| Value::Str(self.id_of(*r))).unwrap_or_else(|| str_value(&f.id));
        node.options.insert("task_id".into(), id);
        match results.first() {
            Some(r) => *r,
            None => {
                let id = f.id.unwrap_or_default();
                self.task_result(id)
            }
        }
    }

    /// `chord.freeze`: the header frozen as a group carrying the body, then
    /// the body; the body's first result has the header as its parent.
    fn freeze_chord(&mut self, node: &mut Node, f: Freeze) -> R {
        let Kind::Chord { header, body } = &mut node.kind else { return self.task_result(String::new()) };
        if let Header::List(tasks) = header {
            *header = Header::Group(Box::new(Node::group(std::mem::take(tasks), Map::new())));
        }
        let Header::Group(group) = header else { return self.task_result(String::new()) };
        // The header parts hold the body itself in Python, and see it frozen
        // afterwards: freeze them with a placeholder, put the frozen body in.
        self.refs += 1;
        let placeholder = Value::Str(format!("\u{0}celeriac-chord-body-{}", self.refs));
        let chord = body.as_ref().map(|_| placeholder.clone());
        let (gid, members) = self.freeze_group_tasks(
            group,
            &Freeze { parent_id: f.parent_id.clone(), root_id: f.root_id.clone(), chord, ..Freeze::default() },
        );
        let header_result = self.group_result(gid.clone(), members);
        node.options.insert("task_id".into(), Value::Str(gid));
        let Kind::Chord { header, body } = &mut node.kind else { return header_result };
        let Some(body) = body else {
            return header_result;
        };
        let body_result = self.freeze(
            body,
            Freeze {
                id: f.id,
                root_id: f.root_id,
                chord: f.chord,
                group_id: f.group_id,
                group_index: f.group_index,
                parent_id: None,
            },
        );
        // The copy holds the body's own chords without their header parts'
        // bodies: those are stripped before anything carrying this body is
        // sent, and copying them at every level made nested chord bodies
        // grow exponentially while planning.
        let mut stripped = body.clone();
        stripped.strip_chord_header_links();
        let frozen_body = stripped.to_value();
        if let Header::Group(group) = header {
            // Every header part gets a copy of the frozen body.
            let copies = group.count_value(&placeholder);
            let size = weight(&frozen_body, self.limits.total_bytes).saturating_mul(copies);
            if self.over.is_none() && self.charge(size, "chord bodies copied into header parts") {
                group.replace_value(&placeholder, &frozen_body);
            }
        }
        // Link the body's first result without a parent to the header.
        let mut at = body_result;
        let mut seen = 0;
        loop {
            match self.parent(at) {
                Some(p) if seen < self.results.len() => {
                    at = p;
                    seen += 1;
                }
                _ => {
                    self.set_parent(at, Some(header_result));
                    break;
                }
            }
        }
        body_result
    }

    /// `_chain.prepare_steps`: the steps in reverse order (the next step
    /// last), each frozen, with a group followed by a step made a chord.
    fn prepare_steps(&mut self, tasks: Vec<Node>, p: Prepare) -> (Vec<Step>, Vec<R>) {
        let mut steps: VecDeque<Step> =
            tasks.into_iter().enumerate().map(|(i, t)| Step::at(t, (!p.clone).then(|| vec![i]))).collect();
        // The first real task is the one popped last: splice chains at the
        // head, drop leading empty groups followed by more.
        let mut stripped: Option<Step> = None;
        while let Some(head) = steps.pop_front() {
            if head.node.is_chain() {
                let chain = if p.clone { head.node.clone_sig() } else { head.node };
                for (j, t) in chain.members().iter().enumerate().rev() {
                    steps.push_front(Step::at(t.clone(), child(&head.origin, j)));
                }
                continue;
            }
            if head.node.is_group() {
                let (node, unrolled) = head.node.unroll_group();
                let origin = if unrolled { child(&head.origin, 0) } else { head.origin };
                let head = Step::at(node, origin);
                if !steps.is_empty() && head.node.is_empty_group() {
                    stripped = Some(head);
                    continue;
                }
                steps.push_front(head);
                break;
            }
            steps.push_front(head);
            break;
        }
        if let (Some(group), true) = (stripped, steps.is_empty()) {
            steps.push_back(group);
        }

        let mut out: Vec<Step> = Vec::new();
        let mut results: Vec<R> = Vec::new();
        let mut prev_res: Option<R> = None;
        let mut i = 0usize;
        while let Some(mut step) = steps.pop_back() {
            let is_first = steps.is_empty();
            let is_last = i == 0;
            if step.node.is_group() {
                let (node, unrolled) = step.node.unroll_group();
                if unrolled {
                    step.origin = child(&step.origin, 0);
                }
                step.node = node;
                if step.node.is_empty_group() && (!steps.is_empty() || !out.is_empty()) {
                    continue;
                }
            }
            if p.clone && step.node.is_chord() && Node::chain_led_by_task(step.node.body()) {
                for t in step.node.unroll_body() {
                    steps.push_back(Step::at(t, None));
                }
                continue;
            }
            if p.clone {
                step.node = if is_first {
                    step.node.clone_with(&p.args, &p.kwargs, &Map::new())
                } else {
                    step.node.clone_sig()
                };
            } else if is_first && !p.args.is_empty() {
                let mut args = p.args.clone();
                args.append(&mut step.node.args);
                step.node.args = args;
            }
            if step.node.is_chain() {
                for (j, t) in step.node.members().iter().enumerate() {
                    steps.push_back(Step::at(t.clone(), child(&step.origin, j)));
                }
                continue;
            }
            if step.node.is_group() && !out.is_empty() {
                // group(...) | s is chord(group, s).
                let (Some(body), Some(body_res)) = (out.pop(), results.pop()) else { continue };
                let mut options = Map::new();
                if let Some(prev) = prev_res.and_then(|r| self.res(r)).filter(|r| r.members.is_none()) {
                    options.insert("task_id".into(), Value::Str(prev.id.clone()));
                }
                options.insert("root_id".into(), str_value(&p.root_id));
                let group_origin = step.origin.take();
                let group = std::mem::replace(&mut step.node, Node::task(""));
                step.node = Node::chord(group.header_list(), Some(body.node), options);
                step.upgraded = Some((group_origin, body.origin));
                // The rest of the chain hangs on the chord's result now.
                let mut node = results.last().copied();
                while let Some(n) = node {
                    if self.parent(n) == Some(body_res) {
                        break;
                    }
                    node = self.parent(n);
                }
                if let Some(n) = node {
                    self.set_parent(n, None);
                    prev_res = Some(n);
                }
            }
            let res = if is_last {
                self.freeze(
                    &mut step.node,
                    Freeze {
                        id: p.last_task_id.clone(),
                        root_id: p.root_id.clone(),
                        group_id: p.group_id.clone(),
                        chord: p.chord_body.clone(),
                        group_index: p.group_index,
                        parent_id: None,
                    },
                )
            } else {
                self.freeze(&mut step.node, Freeze { root_id: p.root_id.clone(), ..Freeze::default() })
            };
            i += 1;
            if !out.is_empty() {
                if let Some(prev) = prev_res {
                    if self.parent(prev).is_none() {
                        self.set_parent(prev, Some(res));
                    }
                }
            }
            for errback in &p.link_error {
                if let Ok(sig) = Node::from_value(errback) {
                    step.node.link_error(&sig);
                    if let Some(body) = step.node.body_mut() {
                        body.link_error(&sig);
                    }
                }
            }
            let is_chord = step.node.is_chord();
            out.push(step);
            results.push(res);
            prev_res = Some(res);
            if is_chord {
                let mut node = res;
                let mut seen = 0;
                while let (Some(parent), true) = (self.parent(node), seen < self.results.len()) {
                    node = parent;
                    seen += 1;
                }
                prev_res = Some(node);
            }
        }
        if p.clone {
            for step in out.iter_mut() {
                step.node.strip_chord_header_links();
            }
        }
        (out, results)
    }

    /// `sig.apply_async(args, kwargs, **options)`, as each canvas type
    /// applies. `None`: nothing to send (an empty chain).
    pub(crate) fn apply_async(
        &mut self,
        node: Node,
        args: Vec<Value>,
        kwargs: Map,
        options: Map,
    ) -> Result<Option<R>, Refused> {
        self.refused()?;
        match node.kind {
            Kind::Task | Kind::Other(_) => Ok(Some(self.apply_sig(node, args, kwargs, options))),
            Kind::Chain(_) => {
                let mut merged = node.options.clone();
                merged.extend(options);
                self.run_chain(node, args, kwargs, merged)
            }
            Kind::Group(_) => self.apply_group(node, args, kwargs, options).map(Some),
            Kind::Chord { .. } => self.apply_chord(node, args, kwargs, options).map(Some),
        }
    }

    /// `Signature.apply_async`: sends the task with its options and these.
    fn apply_sig(&mut self, node: Node, args: Vec<Value>, kwargs: Map, mut options: Map) -> R {
        options.retain(|_, v| !v.is_null());
        let (args, kwargs, mut options) = if !args.is_empty() || !kwargs.is_empty() || !options.is_empty() {
            node.merge(&args, &kwargs, Some(&options), false)
        } else {
            (node.args, node.kwargs, node.options)
        };
        let id = opt_str(&options, "task_id").unwrap_or_else(|| self.new_id());
        options.insert("task_id".into(), Value::Str(id.clone()));
        let add_to_parent = options.get("add_to_parent").is_none_or(Value::is_truthy);
        let limit = self.limits.message_bytes;
        let size = message_weight(&args, &kwargs, &options, limit);
        if size > limit {
            if self.over.is_none() {
                self.over = Some(format!(
                    "the message for {} would be more than {limit} bytes (worker_max_message_size), \
                     which workers refuse; send large data out of band",
                    node.task
                ));
            }
        } else if self.charge(size, "messages") {
            self.ops.push(Op::Send { task: node.task, args, kwargs, options });
        }
        let r = self.task_result(id);
        if add_to_parent {
            self.trail.push(r);
        }
        r
    }

    /// `_chain.run`.
    fn run_chain(&mut self, node: Node, args: Vec<Value>, kwargs: Map, mut options: Map) -> Result<Option<R>, Refused> {
        let mut take = |k: &str| options.shift_remove(k).filter(|v| !v.is_null());
        let group_id = take("group_id").and_then(|v| v.as_str().map(str::to_owned));
        let chord = take("chord");
        let task_id = take("task_id").and_then(|v| v.as_str().map(str::to_owned));
        let link = take("link");
        let link_error = maybe_list(take("link_error"));
        let root_id = take("root_id").and_then(|v| v.as_str().map(str::to_owned));
        // Consumed by `run`, not used by `prepare_steps`.
        take("parent_id");
        let group_index = take("group_index").and_then(|v| v.as_i64());
        for named in ["publisher", "producer", "app"] {
            options.shift_remove(named);
        }
        let args = if !args.is_empty() && !node.immutable {
            args.iter().chain(&node.args).cloned().collect()
        } else {
            node.args.clone()
        };
        let tasks = node.members().to_vec();
        let (mut steps, results) = self.prepare_steps(
            tasks,
            Prepare {
                args,
                kwargs,
                root_id,
                link_error,
                last_task_id: task_id,
                group_id,
                chord_body: chord,
                clone: true,
                group_index,
            },
        );
        if results.is_empty() {
            return Ok(None);
        }
        if let (Some(link), Some(last)) = (link, steps.first_mut()) {
            last.node.extend_list_option("link", maybe_list(Some(link)));
        }
        let Some(first) = steps.pop() else { return Ok(None) };
        // The rest of the chain goes with the first task (`chain` option),
        // after any chain the options already carry.
        let rest: Vec<Value> = steps.iter().map(|s| s.node.to_value()).collect();
        let chain = match options.get("chain") {
            Some(Value::List(before)) => Value::List(before.iter().cloned().chain(rest).collect()),
            Some(_) => Value::List(rest),
            None => Value::List(rest),
        };
        options.insert("chain".into(), chain);
        let applied = self.apply_async(first.node, Vec::new(), Map::new(), options)?;
        Ok(if steps.is_empty() { applied } else { results.first().copied() })
    }

    /// `group._freeze_gid`: the group's options with these, its id as
    /// `group_id`.
    fn freeze_gid(&mut self, node: &Node, options: Map) -> (Map, String, Option<String>) {
        let mut merged = node.options.clone();
        for (k, v) in options {
            if !IMMUTABLE_OPTIONS.contains(&k.as_str()) || !node.options.contains_key(&k) {
                merged.insert(k, v);
            }
        }
        let gid = match merged.shift_remove("task_id") {
            Some(Value::Str(id)) => id,
            Some(other) if other.is_truthy() => other.as_str().unwrap_or_default().to_owned(),
            _ => self.new_id(),
        };
        merged.insert("group_id".into(), Value::Str(gid.clone()));
        let root_id = opt_str(&merged, "root_id");
        (merged, gid, root_id)
    }

    /// `group.apply_async`.
    fn apply_group(&mut self, mut node: Node, args: Vec<Value>, kwargs: Map, mut options: Map) -> Result<R, Refused> {
        if opt_some(&options, "link").is_some() {
            return Err(Refused("Cannot add link to group: use a chord".into()));
        }
        if opt_some(&options, "link_error").is_some() {
            return Err(Refused("Cannot add link to group: do that on individual tasks".into()));
        }
        let add_to_parent = options.get("add_to_parent").is_none_or(Value::is_truthy);
        for named in ["add_to_parent", "producer", "link", "link_error"] {
            options.shift_remove(named);
        }
        if node.members().is_empty() {
            return Ok(self.freeze(&mut node, Freeze::default()));
        }
        let (options, gid, root_id) = self.freeze_gid(&node, options);
        let prepared = self.prepared(node.members(), &[], &gid, &root_id);
        let results = self.apply_tasks(prepared, &gid, args, kwargs, options)?;
        let result = match results.as_slice() {
            [only] if self.res(*only).is_some_and(|r| r.members.is_some()) => *only,
            _ => self.group_result(gid, results),
        };
        if add_to_parent {
            self.trail.push(result);
        }
        Ok(result)
    }

    /// `group._prepared`: the members (nested groups unrolled), each a clone
    /// frozen with the group's membership.
    fn prepared(
        &mut self,
        tasks: &[Node],
        partial_args: &[Value],
        group_id: &str,
        root_id: &Option<String>,
    ) -> Vec<(Node, R)> {
        let mut out = Vec::new();
        for (index, task) in tasks.iter().enumerate() {
            let mut task = task.clone_sig();
            match &task.kind {
                Kind::Group(members) => {
                    let members = members.clone();
                    out.extend(self.prepared(&members, partial_args, group_id, root_id));
                }
                Kind::Chain(members) if members.is_empty() => {}
                _ => {
                    if !partial_args.is_empty() && !task.immutable {
                        let mut args = partial_args.to_vec();
                        args.append(&mut task.args);
                        task.args = args;
                    }
                    let r = self.freeze(
                        &mut task,
                        Freeze {
                            group_id: Some(group_id.to_owned()),
                            root_id: root_id.clone(),
                            group_index: Some(i64::try_from(index).unwrap_or(i64::MAX)),
                            ..Freeze::default()
                        },
                    );
                    out.push((task, r));
                }
            }
        }
        out
    }

    /// `group._apply_tasks`: applies each member; a chord's size is written
    /// before its last header part is sent.
    fn apply_tasks(
        &mut self,
        prepared: Vec<(Node, R)>,
        group_id: &str,
        args: Vec<Value>,
        kwargs: Map,
        mut options: Map,
    ) -> Result<Vec<R>, Refused> {
        let chord = options.shift_remove("chord").filter(|v| !v.is_null());
        for named in ["add_to_parent", "group_index", "args", "kwargs", "producer"] {
            options.shift_remove(named);
        }
        let n = prepared.len();
        let mut size = 0u64;
        let mut results = Vec::with_capacity(n);
        let limit = self.limits.total_bytes;
        let copied = chord.as_ref().map_or(0, |c| weight(c, limit)).saturating_add(message_weight(
            &args,
            &kwargs,
            &Map::new(),
            limit,
        ));
        for (position, (sig, res)) in prepared.into_iter().enumerate() {
            if !self.charge(copied, "arguments and chord bodies copied into group members") {
                return Err(Refused(self.over.clone().unwrap_or_default()));
            }
            let chord_obj = chord.clone().or_else(|| opt_some(&sig.options, "chord"));
            size += sig.descend();
            if chord_obj.is_some() && position + 1 == n {
                self.ops.push(Op::ChordSize { group_id: group_id.to_owned(), size });
            }
            let mut call = Map::new();
            call.insert("add_to_parent".into(), Value::Bool(false));
            call.insert("chord".into(), chord_obj.unwrap_or(Value::Null));
            for (k, v) in &options {
                call.insert(k.clone(), v.clone());
            }
            self.apply_async(sig, args.clone(), kwargs.clone(), call)?;
            results.push(res);
        }
        Ok(results)
    }

    /// `chord.apply_async`.
    fn apply_chord(&mut self, node: Node, args: Vec<Value>, mut kwargs: Map, mut options: Map) -> Result<R, Refused> {
        let task_id_param = options.shift_remove("task_id").filter(|v| !v.is_null());
        for named in ["producer", "publisher", "connection", "router", "result_cls"] {
            options.shift_remove(named);
        }
        let args = if !args.is_empty() && !node.immutable {
            args.iter().chain(&node.args).cloned().collect()
        } else {
            node.args.clone()
        };
        let Kind::Chord { header, body } = &node.kind else { return Err(Refused("not a chord".into())) };
        let body = match kwargs.shift_remove("body").filter(Value::is_truthy) {
            Some(v) => Node::from_value(&v)?,
            None => match body {
                Some(b) => (**b).clone(),
                None => return Err(Refused("a chord needs a body".into())),
            },
        };
        let mut call_kwargs = match node.kwargs.get("kwargs") {
            Some(Value::Map(m)) => m.clone(),
            _ => Map::new(),
        };
        call_kwargs.extend(kwargs);
        let mut header_delay = Map::new();
        for key in ["countdown", "eta"] {
            if opt_some(&options, key).is_some() {
                if let Some(v) = options.shift_remove(key) {
                    header_delay.insert(key.into(), v);
                }
            }
        }
        let mut callbacks = Map::new();
        for key in ["link", "link_error"] {
            if let Some(v) = options.shift_remove(key) {
                callbacks.insert(key.into(), v);
            }
        }
        let body_options: Map =
            options.iter().filter(|(k, _)| *k != "parent_id").map(|(k, v)| (k.clone(), v.clone())).collect();
        let body = body.clone_with(&[], &Map::new(), &body_options);
        let header = match header {
            Header::Group(group) => group.clone_sig(),
            Header::List(tasks) => {
                let mut o = Map::new();
                let id = opt_str(&node.options, "task_id").unwrap_or_else(|| self.new_id());
                o.insert("task_id".into(), Value::Str(id));
                Node::group(tasks.clone(), o)
            }
        };
        let mut merged = node.options.clone();
        merged.extend(options);
        merged.extend(callbacks);
        merged.shift_remove("countdown");
        merged.shift_remove("eta");
        let option_task_id = merged.shift_remove("task_id");
        let task_id = task_id_param.or(option_task_id).and_then(|v| v.as_str().map(str::to_owned));
        for named in ["interval", "max_retries", "eager", "kwargs", "header_delay", "app", "countdown"] {
            merged.shift_remove(named);
        }
        self.run_chord(&node, header, body, args, task_id, call_kwargs, header_delay, merged)
    }

    /// `chord.run`: the body frozen with the header's id as its group, the
    /// header's size recorded, the header sent with the body attached.
    #[allow(clippy::too_many_arguments)]
    fn run_chord(
        &mut self,
        chord: &Node,
        mut header: Node,
        mut body: Node,
        partial_args: Vec<Value>,
        task_id: Option<String>,
        kwargs: Map,
        mut header_delay: Map,
        options: Map,
    ) -> Result<R, Refused> {
        let group_id = opt_str(&header.options, "task_id").unwrap_or_else(|| self.new_id());
        let root_id = opt_str(&body.options, "root_id");
        let mut opts = chord.options.clone();
        opts.extend(options);
        for key in ["countdown", "eta"] {
            if !header_delay.contains_key(key) {
                if let Some(v) = opt_some(&opts, key) {
                    header_delay.insert(key.into(), v);
                }
            }
            opts.shift_remove(key);
        }
        if !opts.is_empty() {
            opts.shift_remove("task_id");
            body = self.add_body_callbacks(body, &mut opts);
            for (k, v) in opts.iter().filter(|(k, _)| *k != "parent_id") {
                body.options.insert(k.clone(), v.clone());
            }
        }
        if body.is_chain() {
            body.unroll_chords();
        }
        let body_task_id = task_id.unwrap_or_else(|| self.new_id());
        let body_res = self.freeze(
            &mut body,
            Freeze {
                id: Some(body_task_id),
                group_id: Some(group_id.clone()),
                root_id: root_id.clone(),
                ..Freeze::default()
            },
        );
        body.strip_chord_header_links();
        for key in ["chain", "chord", "task_id"] {
            opts.shift_remove(key);
        }
        header.options.insert("task_id".into(), Value::Str(group_id.clone()));
        let (gid, members) = self.freeze_group_tasks(
            &mut header,
            &Freeze { group_id: Some(group_id.clone()), chord: Some(body.to_value()), root_id, ..Freeze::default() },
        );
        let header_res = if !header.members().is_empty() {
            let tuple = ResultTuple::group(&gid, members.iter().map(|m| self.tuple(*m)).collect());
            self.ops.push(Op::ApplyChord { header: tuple });
            let mut apply = Map::new();
            apply.insert("task_id".into(), Value::Str(group_id));
            apply.extend(opts);
            apply.extend(header_delay);
            self.apply_group(header, partial_args, kwargs, apply)?
        } else {
            self.apply_async(body.clone(), vec![Value::List(Vec::new())], Map::new(), Map::new())?;
            self.group_result(gid, members)
        };
        self.set_parent(body_res, Some(header_res));
        Ok(body_res)
    }

    /// `chord._add_body_callbacks`: the chord's links go on its body.
    fn add_body_callbacks(&mut self, body: Node, options: &mut Map) -> Node {
        add_body_callbacks(body, options)
    }
}

/// `chord._add_body_callbacks`: `link` and `link_error` of `options` (taken
/// out) go on the chord's body, as Celery links them: a callback with
/// `body.link`, an errback on each task of a group body, else in the body's
/// own `link_error`.
pub(crate) fn add_body_callbacks(body: Node, options: &mut Map) -> Node {
    let callbacks = maybe_list(options.shift_remove("link"));
    let errbacks = maybe_list(options.shift_remove("link_error"));
    if callbacks.is_empty() && errbacks.is_empty() {
        return body;
    }
    let mut body = body.clone_with_members();
    for callback in callbacks {
        let Ok(callback) = Node::from_value(&callback) else { continue };
        let callback = callback.clone_with_members();
        if body.is_empty_group() {
            body.append_to_list_option("link", callback.to_value());
        } else {
            body.link(&callback);
        }
    }
    for errback in errbacks {
        if body.is_group() {
            if let Ok(sig) = Node::from_value(&errback) {
                link_error_to_body_tasks(&mut body, &sig, true);
            }
        } else {
            body.append_to_list_option("link_error", errback);
        }
    }
    body
}

/// `_link_error_to_body_tasks`.
fn link_error_to_body_tasks(sig: &mut Node, errback: &Node, runs_as_group: bool) {
    match &mut sig.kind {
        Kind::Group(tasks) => {
            if runs_as_group && opt_some(&sig.options, "link_error").is_some() {
                sig.append_to_list_option("link_error", errback.clone_sig().to_value());
            } else {
                for t in tasks.iter_mut() {
                    link_error_to_body_tasks(t, errback, false);
                }
            }
        }
        Kind::Chord { body: Some(body), .. } => link_error_to_body_tasks(body, errback, true),
        _ => sig.link_error(&errback.clone_sig()),
    }
}
