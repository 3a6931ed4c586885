//! Applying a canvas signature as a Celery worker does: the next step of a
//! chain, a task's links and errbacks, a chord body once its header is done,
//! a replacement, with the previous result prepended.
//!
//! A Celery worker applies these with `celery.canvas` itself
//! (`sig.apply_async((retval,), chain=..., parent_id=..., root_id=...)` in
//! the tracer, `callback.delay(results)` in the chord join), so the
//! [`Applier`] plans with the same port of `celery.canvas` the client sends
//! canvases with (`engine.rs`): ids frozen at the same moments, chord
//! sizes as `_chord._descend` counts them (a chain ending in a group or a
//! chord counts that group's tasks or that chord's body), a header whose
//! parts are groups saved for the join (`apply_chord`), group options such as
//! `link_error` passed on as Celery does. Planning is pure ([`Plan`]); the
//! plan is then performed (sent, sizes written) and can be performed again
//! after an outage with the same ids.
//!
//! What the worker adds, as Celery's `send_task` does inside a task: a
//! message planned without a `parent_id` or `root_id` gets the running
//! task's ([`Lineage`]).

use celeriac_broker::{BrokerError, Producer, SendOptions};
use celeriac_protocol::result::ResultTuple;
use celeriac_protocol::signature::SignatureKind;
use celeriac_protocol::{Map, Signature, Value};
use futures_util::future::BoxFuture;

pub use crate::engine::PlanLimits;

use crate::engine::{Engine, Ids, Node, Op};

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
        /// The backend could not be reached (an outage): performing the plan
        /// again when it is back resumes at this step.
        transient: bool,
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

impl CanvasError {
    /// Whether waiting can help: the broker or the result backend could not
    /// be reached. Performing the same plan again resumes where it stopped.
    pub fn is_transient(&self) -> bool {
        match self {
            CanvasError::Broker(e) => e.is_transient(),
            CanvasError::ChordSize { transient, .. } => *transient,
            CanvasError::NoBackend(_) | CanvasError::Invalid { .. } => false,
        }
    }
}

/// Why the result backend did not record a chord's bookkeeping.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ChordSizeError {
    /// What the backend said.
    pub message: String,
    /// It could not be reached (an outage): worth retrying.
    pub transient: bool,
}

impl From<celeriac_backend::BackendError> for ChordSizeError {
    fn from(e: celeriac_backend::BackendError) -> ChordSizeError {
        ChordSizeError { transient: e.is_connection(), message: e.to_string() }
    }
}

/// Where a chord's bookkeeping goes: the result backend's join
/// (`set_chord_size`, `apply_chord`).
pub trait ChordSizes: Send + Sync {
    /// Records that chord `group_id` completes after `size` header parts.
    fn set_chord_size(&self, group_id: &str, size: u64) -> BoxFuture<'_, Result<(), ChordSizeError>>;

    /// Celery's `backend.apply_chord(header_result)`: saves the header's
    /// group result when one of its parts is a group, so the join returns
    /// the nested results (see `RedisBackend::apply_chord`).
    fn apply_chord(&self, header: &ResultTuple) -> BoxFuture<'_, Result<(), ChordSizeError>>;
}

impl ChordSizes for celeriac_backend::RedisBackend {
    fn set_chord_size(&self, group_id: &str, size: u64) -> BoxFuture<'_, Result<(), ChordSizeError>> {
        let group_id = group_id.to_owned();
        Box::pin(async move {
            celeriac_backend::RedisBackend::set_chord_size(self, &group_id, size).await.map_err(ChordSizeError::from)
        })
    }

    fn apply_chord(&self, header: &ResultTuple) -> BoxFuture<'_, Result<(), ChordSizeError>> {
        let header = header.clone();
        Box::pin(async move {
            let meta = celeriac_protocol::GroupMeta::new(header);
            celeriac_backend::RedisBackend::apply_chord(self, meta.group_id(), &meta)
                .await
                .map(drop)
                .map_err(ChordSizeError::from)
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
    /// What a result tuple names (its parent left out).
    pub fn from_tuple(tuple: &ResultTuple) -> Applied {
        match &tuple.children {
            Some(members) => Applied::Group(tuple.id.clone(), members.iter().map(Applied::from_tuple).collect()),
            None => Applied::Task(tuple.id.clone()),
        }
    }

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

/// What applying a canvas does, planned: the messages and the chord
/// bookkeeping in order, and what the applying task records as children.
#[derive(Clone, Debug)]
pub struct Plan {
    ops: Vec<Op>,
    /// The producer's options of each op that sends, checked while planning
    /// (`None` for the other ops).
    sends: Vec<Option<SendOptions>>,
    trail: Vec<Applied>,
    result: Applied,
    /// How many ops were performed: performing again resumes here, so what
    /// went out before an outage is not sent (nor a chord size written)
    /// twice.
    done: usize,
}

impl Plan {
    /// What the applying task records as its children (Celery's trail): the
    /// first message of a chain, a group or a chord's header.
    pub fn trail(&self) -> &[Applied] {
        &self.trail
    }

    /// The canvas's result: a task (a chain's last, a chord's body) or a group.
    pub fn result(&self) -> &Applied {
        &self.result
    }

    /// How many steps (messages, chord sizes) were performed; all of them
    /// once [`Plan::is_done`].
    pub fn performed(&self) -> usize {
        self.done
    }

    /// Whether every step was performed.
    pub fn is_done(&self) -> bool {
        self.done >= self.ops.len()
    }

    /// The first child, else the result: what one applied canvas is named as.
    pub fn applied(&self) -> Applied {
        self.trail.first().unwrap_or(&self.result).clone()
    }

    /// The messages planned: task name, arguments, `send_task` options.
    pub fn messages(&self) -> impl Iterator<Item = (&str, &[Value], &Map)> {
        self.ops.iter().filter_map(|op| match op {
            Op::Send { task, args, options, .. } => Some((task.as_str(), args.as_slice(), options)),
            _ => None,
        })
    }
}

/// How a canvas is applied: Celery's `apply_async` arguments.
#[derive(Clone, Debug, Default)]
pub struct Call {
    /// Positional arguments (`(retval,)`): prepended unless immutable.
    pub args: Vec<Value>,
    /// `send_task`/`apply_async` options (`chain`, `parent_id`, `root_id`,
    /// `priority`, ...).
    pub options: Map,
    /// Where the ids the plan gives to signatures without one come from:
    /// random (Celery's `uuid()`) when `None`; else name-based UUIDs (v5) of
    /// this seed and their order, so that planning the same canvas with the
    /// same seed gives the same ids (see [`Call::with_stable_ids`]).
    pub id_seed: Option<String>,
}

impl Call {
    /// The tracer's call for the next step of a chain or a link:
    /// `apply_async((retval,), chain=rest, parent_id=, root_id=, priority=)`.
    /// `rest` is `None` for a link (no `chain` option).
    pub fn step(prev: Option<Value>, rest: Option<Vec<Signature>>, lineage: &Lineage) -> Call {
        let mut options = Map::new();
        if let Some(rest) = rest {
            options.insert("chain".into(), Value::List(rest.iter().map(Signature::to_value).collect()));
        }
        options.insert("parent_id".into(), lineage.parent_id.clone().map_or(Value::Null, Value::Str));
        options.insert("root_id".into(), lineage.root_id.clone().map_or(Value::Null, Value::Str));
        options.insert("priority".into(), lineage.priority.map_or(Value::Null, |p| Value::Int(i64::from(p))));
        Call { args: prev.into_iter().collect(), options, id_seed: None }
    }

    /// `sig.delay(*args)`: nothing but the arguments (a chord body with the
    /// header's results, a replacement); parent and root come from the
    /// running task when the messages are sent.
    pub fn delay(args: Vec<Value>) -> Call {
        Call { args, options: Map::new(), id_seed: None }
    }

    /// Ids for what the plan must name itself (a group of callbacks, a
    /// chord's header group, a link's task) derived from `seed` instead of
    /// random. A worker applying a task's callbacks seeds them with the task
    /// id and which callback it is: when the worker dies mid-send and the
    /// message is redelivered, the parts sent again carry the ids they had,
    /// and the results and chord counters are not doubled under new ids.
    pub fn with_stable_ids(mut self, seed: impl Into<String>) -> Call {
        self.id_seed = Some(seed.into());
        self
    }
}

/// Applies signatures through a producer, with a result backend for chords.
pub struct Applier<'a> {
    producer: &'a Producer,
    chords: Option<&'a dyn ChordSizes>,
    limits: PlanLimits,
}

impl<'a> Applier<'a> {
    /// Applies through `producer`; chords record their size in `chords`.
    pub fn new(producer: &'a Producer, chords: Option<&'a dyn ChordSizes>) -> Applier<'a> {
        Applier { producer, chords, limits: PlanLimits::default() }
    }

    /// Refuses canvases whose plan would exceed `limits` (a worker passes
    /// its `worker_max_message_size` as the largest message).
    pub fn with_limits(mut self, limits: PlanLimits) -> Applier<'a> {
        self.limits = limits;
        self
    }

    /// Plans applying `sig` with `call` (nothing is sent yet). Everything
    /// that can be checked is checked here, so that a canvas that cannot be
    /// applied is refused before its first message goes out: every message's
    /// options, and a result backend for its chords.
    pub fn plan(&self, sig: &Signature, call: Call) -> Result<Plan, CanvasError> {
        let plan = plan_within(&self.producer.config().reply_to, sig, call, self.limits)?;
        if self.chords.is_none() {
            if let Some(Op::ChordSize { group_id, .. }) = plan.ops.iter().find(|op| matches!(op, Op::ChordSize { .. }))
            {
                return Err(CanvasError::NoBackend(group_id.clone()));
            }
        }
        Ok(plan)
    }

    /// Sends the planned messages and writes the chord sizes, in order; a
    /// message without a parent or root gets `current`'s (the running task,
    /// as `send_task` inside a task). After an error, performing the same
    /// plan again resumes at the step that failed: the steps before it are
    /// not repeated (a chord size written again would reset the join).
    pub async fn perform(&self, plan: &mut Plan, current: &Lineage) -> Result<(), CanvasError> {
        while let (Some(op), Some(send)) = (plan.ops.get(plan.done), plan.sends.get(plan.done)) {
            match op {
                Op::Send { task, args, kwargs, .. } => {
                    let mut send = send.clone().unwrap_or_default();
                    if send.parent_id.is_none() {
                        send.parent_id.clone_from(&current.parent_id);
                    }
                    if send.root_id.is_none() {
                        send.root_id.clone_from(&current.root_id);
                    }
                    if send.priority.is_none() {
                        send.priority = current.priority;
                    }
                    self.producer.send_task(task, args.clone(), kwargs.clone(), send).await?;
                }
                Op::ChordSize { group_id, size } => {
                    let chords = self.chords.ok_or_else(|| CanvasError::NoBackend(group_id.clone()))?;
                    chords.set_chord_size(group_id, *size).await.map_err(|e| CanvasError::ChordSize {
                        group_id: group_id.clone(),
                        reason: e.message,
                        transient: e.transient,
                    })?;
                }
                Op::ApplyChord { header } => {
                    if let Some(chords) = self.chords {
                        chords.apply_chord(header).await.map_err(|e| CanvasError::ChordSize {
                            group_id: header.id.clone(),
                            reason: e.message,
                            transient: e.transient,
                        })?;
                    }
                }
            }
            plan.done += 1;
        }
        Ok(())
    }

    /// Applies `sig` with `prev` prepended to its arguments (unless it is
    /// immutable), followed by `rest` (a chain in Celery's reversed order:
    /// the next step last), as the tracer applies the next step of a chain
    /// (explicit `parent_id` and `root_id` from `lineage`). Returns the first
    /// child (see [`Plan::applied`]).
    pub fn apply<'s>(
        &'s self,
        sig: Signature,
        prev: Option<Value>,
        rest: Vec<Signature>,
        lineage: &'s Lineage,
    ) -> BoxFuture<'s, Result<Applied, CanvasError>> {
        Box::pin(async move {
            let rest = (!rest.is_empty()).then_some(rest);
            let mut plan = self.plan(&sig, Call::step(prev, rest, lineage))?;
            self.perform(&mut plan, lineage).await?;
            Ok(plan.applied())
        })
    }
}

/// Plans applying `sig` with `call`, as a worker whose replies go to
/// `reply_to` (the `reply_to` frozen into the signatures).
pub fn plan(reply_to: &str, sig: &Signature, call: Call) -> Result<Plan, CanvasError> {
    plan_within(reply_to, sig, call, PlanLimits::default())
}

/// [`plan`], refused with [`CanvasError::Invalid`] when it would produce more
/// than `limits` allow (nothing is sent then).
pub fn plan_within(reply_to: &str, sig: &Signature, call: Call, limits: PlanLimits) -> Result<Plan, CanvasError> {
    let node = Node::from_value(&sig.to_value()).map_err(|e| invalid(sig, e.0))?;
    node.check_links(0).map_err(|e| invalid(sig, e.0))?;
    crate::engine::check_link_options(&sig.task, &call.options, 0).map_err(|e| invalid(sig, e.0))?;
    let ids = call.id_seed.as_deref().map_or(Ids::Random, Ids::derived);
    let mut engine = Engine::with_limits(reply_to, limits).with_ids(ids);
    let applied = engine.apply_async(node, call.args, Map::new(), call.options).map_err(|e| invalid(sig, e.0))?;
    if let Some(why) = engine.over_limits() {
        return Err(invalid(sig, why.to_owned()));
    }
    let applied_of = |engine: &Engine, r| Applied::from_tuple(&engine.tuple(r));
    let result = match applied {
        Some(r) => applied_of(&engine, r),
        // An empty chain sends nothing.
        None => Applied::Group(engine.new_id(), Vec::new()),
    };
    let trail = engine.trail.iter().map(|r| applied_of(&engine, *r)).collect();
    let ops = std::mem::take(&mut engine.ops);
    let sends = ops
        .iter()
        .map(|op| match op {
            Op::Send { task, options, .. } => crate::apply::send_options(task, options).map(Some),
            _ => Ok(None),
        })
        .collect::<Result<_, _>>()?;
    Ok(Plan { ops, sends, trail, result, done: 0 })
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

fn invalid(sig: &Signature, reason: String) -> CanvasError {
    CanvasError::Invalid { task: sig.task.clone(), reason }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use celeriac_protocol::json;

    use super::*;

    /// Ids of the signatures handed to the worker (pinned by the capture).
    const PINNED: &str = "00000007-";

    /// Keys sorted at every level, so two equal values encode the same.
    fn sorted(value: &Value) -> Value {
        match value {
            Value::Map(m) => {
                let mut m: Map = m.iter().map(|(k, v)| (k.clone(), sorted(v))).collect();
                m.sort_keys();
                Value::Map(m)
            }
            Value::List(items) => Value::List(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }

    /// The JSON text with the ids that are not pinned numbered by first appearance.
    fn numbered(value: &Value) -> String {
        let text = json::to_string(&sorted(value)).unwrap();
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut out = String::new();
        let mut rest = text.as_str();
        while let Some(at) = rest.find('"') {
            out.push_str(&rest[..=at]);
            rest = &rest[at + 1..];
            let end = rest.find('"').unwrap_or(rest.len());
            let word = &rest[..end];
            let is_uuid = word.len() == 36 && word.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
            if is_uuid && !word.starts_with(PINNED) {
                let n = seen.len();
                let n = *seen.entry(word.to_owned()).or_insert(n);
                out.push_str(&format!("<id-{n}>"));
            } else {
                out.push_str(word);
            }
            out.push('"');
            rest = rest.get(end + 1..).unwrap_or("");
        }
        out.push_str(rest);
        out
    }

    fn ops_value(plan: &Plan) -> Value {
        let one = |key: &str, v: Value| {
            let mut m = Map::new();
            m.insert(key.into(), v);
            Value::Map(m)
        };
        Value::List(
            plan.ops
                .iter()
                .map(|op| match op {
                    Op::Send { task, args, kwargs, options } => {
                        // `add_to_parent` is `send_task`'s, not the message's (the capture drops it).
                        let mut options = options.clone();
                        options.shift_remove("add_to_parent");
                        one(
                            "send",
                            Value::List(vec![
                                Value::Str(task.clone()),
                                Value::List(args.clone()),
                                Value::Map(kwargs.clone()),
                                Value::Map(options),
                            ]),
                        )
                    }
                    Op::ChordSize { group_id, size } => one(
                        "chord_size",
                        Value::List(vec![Value::Str(group_id.clone()), Value::Int(i64::try_from(*size).unwrap())]),
                    ),
                    Op::ApplyChord { header } => one("apply_chord", header.to_value()),
                })
                .collect(),
        )
    }

    /// What a worker sends for a chain step, a link, a chord body or an
    /// errback group is what Celery 5.7's canvas code sends for it
    /// (`client/tests/python/worker_apply.py` recorded Celery).
    #[test]
    fn plans_match_what_celery_applies() {
        let fixture = json::from_str(include_str!("../tests/fixtures/worker_apply.json")).unwrap();
        let cases = fixture.as_map().unwrap()["cases"].as_list().unwrap();
        assert!(cases.len() >= 9);
        for case in cases {
            let case = case.as_map().unwrap();
            let name = case["name"].as_str().unwrap();
            let sig = Signature::from_value(&case["sig"]).unwrap();
            // Random ids, and ids derived from a seed (what a worker uses):
            // the same plan either way.
            for seed in [None, Some(format!("{name}/chain"))] {
                let call = Call {
                    args: case["args"].as_list().unwrap().to_vec(),
                    options: case["options"].as_map().unwrap().clone(),
                    id_seed: seed,
                };
                let plan = plan("reply-oid", &sig, call).unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(numbered(&ops_value(&plan)), numbered(&case["ops"]), "{name}");
            }
        }
    }

    /// The tracer's call: `chain` only for a chain step, parent, root and
    /// priority always (`None` when unset), as trace.py passes them.
    #[test]
    fn step_calls_pass_what_the_tracer_passes() {
        let lineage = Lineage { parent_id: Some("p".into()), root_id: Some("r".into()), priority: None };
        let link = Call::step(Some(Value::Int(1)), None, &lineage);
        assert_eq!(link.args, [Value::Int(1)]);
        assert!(!link.options.contains_key("chain"));
        assert_eq!(link.options["parent_id"], Value::Str("p".into()));
        assert_eq!(link.options["priority"], Value::Null);
        let step = Call::step(Some(Value::Null), Some(Vec::new()), &lineage);
        assert_eq!(step.args, [Value::Null]);
        assert_eq!(step.options["chain"], Value::List(Vec::new()));
        assert!(Call::delay(vec![Value::Int(2)]).options.is_empty());
    }

    /// A chord body applied with `delay` carries no parent: the running task's
    /// is filled in when it is sent; the trail names the chord's header group.
    #[test]
    fn chord_trail_is_its_header_group() {
        let mut header = Signature::new("celery.group");
        header.subtask_type = Some("group".into());
        header.kwargs.insert("tasks".into(), Value::List(vec![Signature::new("t.a").to_value()]));
        let mut c = Signature::new("celery.chord");
        c.subtask_type = Some("chord".into());
        c.kwargs.insert("header".into(), header.to_value());
        c.kwargs.insert("body".into(), Signature::new("t.b").to_value());
        c.kwargs.insert("kwargs".into(), Value::Map(Map::new()));
        let plan = plan("reply-oid", &c, Call::delay(Vec::new())).unwrap();
        let [Applied::Group(gid, members)] = plan.trail() else { panic!("trail {:?}", plan.trail()) };
        assert_eq!(members.len(), 1);
        let sent: Vec<_> = plan.messages().collect();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].2.get("group_id"), Some(&Value::Str(gid.clone())));
        assert!(sent[0].2.get("parent_id").is_none());
        assert!(matches!(plan.result(), Applied::Task(_)));
    }

    /// A seeded plan names what it must name (a chord's header group, its
    /// parts, its body) the same each time; another seed, or none, differently.
    #[test]
    fn seeded_plans_give_the_same_ids_again() {
        let c = chord_sig(vec![Signature::new("t.a"), Signature::new("t.b")], Signature::new("t.c"));
        let seeded = |seed: &str| {
            let plan = plan("r", &c, Call::delay(vec![Value::Int(1)]).with_stable_ids(seed)).unwrap();
            (plan.ops.clone(), plan.result().clone())
        };
        let (ops, result) = seeded("parent-id/chain");
        assert_eq!(seeded("parent-id/chain"), (ops.clone(), result.clone()));
        assert_ne!(seeded("parent-id/links").1, result);
        assert_ne!(plan("r", &c, Call::delay(vec![Value::Int(1)])).unwrap().ops, ops);
        // Still UUIDs as Celery writes them, and all different.
        let mut ids: Vec<String> = plan("r", &c, Call::delay(Vec::new()).with_stable_ids("x"))
            .unwrap()
            .messages()
            .map(|(_, _, options)| options.get("task_id").and_then(Value::as_str).unwrap().to_owned())
            .collect();
        assert_eq!(ids.len(), 2);
        for id in &ids {
            assert_eq!(uuid::Uuid::parse_str(id).unwrap().hyphenated().to_string(), *id);
        }
        ids.dedup();
        assert_eq!(ids.len(), 2);
    }

    /// A seed is built from network fields (task id, `retries`,
    /// `replaced_task_nesting`): any text, of any length, gives valid,
    /// distinct ids.
    #[test]
    fn hostile_seeds_still_give_valid_distinct_ids() {
        let c = chord_sig(vec![Signature::new("t.a"), Signature::new("t.b")], Signature::new("t.c"));
        let huge = "x".repeat(1 << 20);
        let seeds = [
            String::new(),
            "\0/\u{ffff}/-9223372036854775808/link".to_owned(),
            format!("{huge}/9223372036854775807/0/chain"),
            "NaN/inf/1e300/links".to_owned(),
        ];
        let mut all = std::collections::HashSet::new();
        for seed in &seeds {
            let plan = plan("r", &c, Call::delay(Vec::new()).with_stable_ids(seed.as_str())).unwrap();
            for (_, _, options) in plan.messages() {
                let id = options.get("task_id").and_then(Value::as_str).unwrap();
                assert_eq!(uuid::Uuid::parse_str(id).unwrap().hyphenated().to_string(), id);
                assert!(all.insert(id.to_owned()), "{id} came twice");
            }
        }
        assert_eq!(all.len(), 2 * seeds.len());
    }

    fn chord_sig(header: Vec<Signature>, body: Signature) -> Signature {
        let mut group = Signature::new("celery.group");
        group.subtask_type = Some("group".into());
        group.kwargs.insert("tasks".into(), Value::List(header.iter().map(Signature::to_value).collect()));
        let mut c = Signature::new("celery.chord");
        c.subtask_type = Some("chord".into());
        c.kwargs.insert("header".into(), group.to_value());
        c.kwargs.insert("body".into(), body.to_value());
        c.kwargs.insert("kwargs".into(), Value::Map(Map::new()));
        c
    }

    /// Every header part carries a copy of the chord's body: a chord of many
    /// parts with a big body (or chords nested so that bodies are copied at
    /// every level) multiplies a small message. Past its budget the plan is
    /// refused, quickly and with a clear error, before anything is sent.
    #[test]
    fn canvases_over_the_budget_are_refused() {
        let mut body = Signature::new("t.body");
        body.args.push(Value::Str("x".repeat(10_000)));
        let parts: Vec<Signature> = (0..2000).map(|i| Signature::new(format!("t.p{i}"))).collect();
        let sig = chord_sig(parts, body);
        assert!(json::to_string(&sig.to_value()).unwrap().len() < 400_000);
        let started = std::time::Instant::now();
        let limits = PlanLimits { total_bytes: 2 << 20, message_bytes: 1 << 20 };
        let err = plan_within("r", &sig, Call::default(), limits).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, CanvasError::Invalid { .. }), "{err:?}");
        assert!(text.contains("more than 2097152 bytes"), "{text}");
        assert!(started.elapsed() < std::time::Duration::from_secs(60), "took {:?}", started.elapsed());
        // Within a budget that holds it, it plans as before.
        let roomy = PlanLimits { total_bytes: 256 << 20, message_bytes: 1 << 20 };
        assert_eq!(plan_within("r", &sig, Call::default(), roomy).unwrap().messages().count(), 2000);
    }

    /// Two-part chords nested 40 deep in each other's bodies plan in linear
    /// size: each header part's copy of the body leaves out the nested
    /// chords' own header copies (stripped before sending anyway), which
    /// used to double what was built at every level.
    #[test]
    fn nested_chord_bodies_plan_without_exponential_copies() {
        let mut sig = Signature::new("t.leaf");
        for level in 0..40 {
            sig = chord_sig(vec![Signature::new(format!("t.a{level}")), Signature::new("t.b")], sig);
        }
        let limits = PlanLimits { total_bytes: 8 << 20, message_bytes: 1 << 20 };
        let planned = plan_within("r", &sig, Call::default(), limits).unwrap();
        assert_eq!(planned.messages().count(), 2);
    }

    /// One message bigger than `worker_max_message_size` is refused before
    /// anything is sent.
    #[test]
    fn messages_over_the_size_limit_are_refused() {
        let mut big = Signature::new("t.big");
        big.args.push(Value::Str("x".repeat(10_000)));
        let limits = PlanLimits { total_bytes: 1 << 20, message_bytes: 4096 };
        let err = plan_within("r", &big, Call::default(), limits).unwrap_err();
        assert!(err.to_string().contains("worker_max_message_size"), "{err}");
        let mut group = Signature::new("celery.group");
        group.subtask_type = Some("group".into());
        let members = vec![Signature::new("t.ok").to_value(), big.to_value()];
        group.kwargs.insert("tasks".into(), Value::List(members));
        assert!(plan_within("r", &group, Call::default(), limits).is_err());
        assert!(plan_within("r", &Signature::new("t.ok"), Call::default(), limits).is_ok());
    }

    /// A bad option on the third member is refused while planning: nothing
    /// of the group is sent (it was found after two messages went out).
    #[tokio::test]
    async fn options_are_checked_before_anything_is_sent() {
        let memory = celeriac_broker::MemoryBroker::default();
        let producer = Producer::new(celeriac_broker::Broker::Memory(memory.clone()), Default::default());
        let applier = Applier::new(&producer, None);
        let mut bad = Signature::new("t.c");
        bad.options.insert("priority".into(), Value::Str("high".into()));
        let mut group = Signature::new("celery.group");
        group.subtask_type = Some("group".into());
        let members = vec![Signature::new("t.a").to_value(), Signature::new("t.b").to_value(), bad.to_value()];
        group.kwargs.insert("tasks".into(), Value::List(members));
        let err = applier.plan(&group, Call::default()).unwrap_err();
        assert!(err.to_string().contains("priority"), "{err}");
        // A chord with no result backend: refused before its header is sent.
        let chord = chord_sig(vec![Signature::new("t.a"), Signature::new("t.b")], Signature::new("t.c"));
        assert!(matches!(applier.plan(&chord, Call::default()), Err(CanvasError::NoBackend(_))));
        // A valid group is planned and sent as before.
        let ok = applier.plan(&chord_sig(Vec::new(), Signature::new("t.c")), Call::default()).unwrap();
        let mut ok = ok;
        applier.perform(&mut ok, &Lineage::default()).await.unwrap();
        assert_eq!(memory.queue_len("celery"), 1);
    }

    /// A `link` or `link_error` that is not a signature, anywhere in the
    /// canvas (a chain step's, a chord body's, a link's own), is refused as
    /// Celery raises on it, instead of being dropped while planning.
    #[test]
    fn malformed_links_are_refused() {
        let chain = |steps: Vec<Signature>| {
            let mut c = Signature::new("celery.chain");
            c.subtask_type = Some("chain".into());
            c.kwargs.insert("tasks".into(), Value::List(steps.iter().map(Signature::to_value).collect()));
            c
        };
        let with = |mut s: Signature, key: &str, v: Value| {
            s.options.insert(key.into(), v);
            s
        };
        let bad_link = with(Signature::new("t.cb"), "link_error", Value::Int(7));
        for (name, sig) in [
            (
                "a chain's errback",
                with(chain(vec![Signature::new("t.a"), Signature::new("t.b")]), "link_error", Value::Int(3)),
            ),
            ("a chain's link", with(chain(vec![Signature::new("t.a"), Signature::new("t.b")]), "link", "x".into())),
            (
                "a chord's link",
                with(
                    chord_sig(vec![Signature::new("t.a")], Signature::new("t.b")),
                    "link",
                    Value::List(vec![Value::Int(1)]),
                ),
            ),
            (
                "a chord body's errback",
                chord_sig(vec![Signature::new("t.a")], with(Signature::new("t.b"), "link_error", Value::Bool(true))),
            ),
            ("a link's own errback", with(Signature::new("t.a"), "link", bad_link.to_value())),
        ] {
            let err = plan("r", &sig, Call::default()).unwrap_err();
            assert!(err.to_string().contains("is not a signature"), "{name}: {err}");
        }
        let mut call = Call::default();
        call.options.insert("link_error".into(), Value::List(vec![Value::Int(2)]));
        assert!(plan("r", &Signature::new("t.a"), call).is_err());
        // Signatures and None are fine.
        let good = with(
            chain(vec![Signature::new("t.a"), Signature::new("t.b")]),
            "link_error",
            Signature::new("t.e").to_value(),
        );
        assert!(plan("r", &with(good, "link", Value::Null), Call::default()).is_ok());
    }

    /// A result backend that fails the first `set_chord_size` as an outage.
    #[derive(Default)]
    struct Blip {
        sizes: std::sync::Mutex<Vec<(String, u64)>>,
        headers: std::sync::atomic::AtomicUsize,
    }

    impl ChordSizes for Blip {
        fn set_chord_size(&self, group_id: &str, size: u64) -> BoxFuture<'_, Result<(), ChordSizeError>> {
            let mut sizes = self.sizes.lock().unwrap();
            sizes.push((group_id.to_owned(), size));
            let first = sizes.len() == 1;
            Box::pin(async move {
                if first {
                    Err(ChordSizeError { message: "Connection refused".into(), transient: true })
                } else {
                    Ok(())
                }
            })
        }

        fn apply_chord(&self, _header: &ResultTuple) -> BoxFuture<'_, Result<(), ChordSizeError>> {
            self.headers.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async { Ok(()) })
        }
    }

    /// A result-backend blip while a chord's size is written is an outage
    /// (transient, retried), and performing the plan again resumes at that
    /// step: the header parts sent before it are not sent twice, the size is
    /// written once more only because it failed.
    #[tokio::test]
    async fn a_retry_resumes_at_the_step_that_failed() {
        let memory = celeriac_broker::MemoryBroker::default();
        let producer = Producer::new(celeriac_broker::Broker::Memory(memory.clone()), Default::default());
        let blip = Blip::default();
        let applier = Applier::new(&producer, Some(&blip));
        let parts = vec![Signature::new("t.a"), Signature::new("t.b"), Signature::new("t.c")];
        let mut plan = applier.plan(&chord_sig(parts, Signature::new("t.body")), Call::default()).unwrap();
        let err = applier.perform(&mut plan, &Lineage::default()).await.unwrap_err();
        assert!(err.is_transient(), "{err}");
        assert!(!plan.is_done());
        // The size goes before the last part: two parts went out.
        assert_eq!(memory.queue_len("celery"), 2);
        applier.perform(&mut plan, &Lineage::default()).await.unwrap();
        assert!(plan.is_done());
        assert_eq!(memory.queue_len("celery"), 3, "no part sent twice");
        let sizes = blip.sizes.lock().unwrap().clone();
        assert_eq!(sizes.len(), 2);
        assert_eq!(sizes[0], sizes[1]);
        assert_eq!(sizes[1].1, 3);
        assert_eq!(blip.headers.load(std::sync::atomic::Ordering::SeqCst), 1, "apply_chord not repeated");
        // Done: performing again sends nothing.
        applier.perform(&mut plan, &Lineage::default()).await.unwrap();
        assert_eq!(memory.queue_len("celery"), 3);
        let permanent = CanvasError::ChordSize { group_id: "g".into(), reason: "bad".into(), transient: false };
        assert!(!permanent.is_transient());
    }

    /// The depth of a value (a scalar is 0).
    fn depth_of(v: &Value) -> usize {
        match v {
            Value::List(items) => 1 + items.iter().map(depth_of).max().unwrap_or(0),
            Value::Map(m) => 1 + m.values().map(depth_of).max().unwrap_or(0),
            _ => 0,
        }
    }

    /// One-part chords nested `n` deep in headers, or in bodies.
    fn nested(n: usize, in_header: bool) -> Signature {
        let mut sig = Signature::new("t.leaf");
        for _ in 0..n {
            sig = if in_header {
                chord_sig(vec![sig], Signature::new("t.body"))
            } else {
                chord_sig(vec![Signature::new("t.part")], sig)
            };
        }
        sig
    }

    /// The deepest canvases the planner accepts are planned and encoded on a
    /// 2 MiB stack (a tokio worker thread's) in a debug build, and every
    /// message they produce decodes within the receiving worker's depth
    /// ceiling; one level more is refused.
    #[test]
    fn the_deepest_accepted_canvases_fit_a_small_stack_and_the_decoders_depth() {
        let handle = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(|| {
                // A header level is two levels of signatures (the group, its
                // member), a body level one; 64 is the planner's cap.
                for (in_header, deepest) in [(true, 32), (false, 63)] {
                    let refused = plan("r", &nested(deepest + 1, in_header), Call::default()).unwrap_err();
                    assert!(refused.to_string().contains("nested"), "{refused}");
                    let planned = plan("r", &nested(deepest, in_header), Call::default()).unwrap();
                    let mut deepest_message = 0;
                    for (task, args, options) in planned.messages() {
                        let body = Value::List(vec![Value::List(args.to_vec()), Value::Map(options.clone())]);
                        let text = json::to_string(&body).unwrap();
                        let back = json::from_str(&text).unwrap_or_else(|e| panic!("{task}: {e}"));
                        deepest_message = deepest_message.max(depth_of(&back));
                    }
                    assert!(deepest_message < celeriac_protocol::limits::MAX_DEPTH_CEILING);
                    eprintln!("in_header={in_header}: {deepest} levels, messages {deepest_message} deep");
                }
            })
            .unwrap();
        handle.join().unwrap();
    }

    /// Hostile signatures are refused, not panicked on.
    #[test]
    fn hostile_signatures_are_errors() {
        let mut group = Signature::new("celery.group");
        group.subtask_type = Some("group".into());
        group.kwargs.insert("tasks".into(), Value::Int(3));
        assert!(plan("r", &group, Call::default()).is_err());
        let mut deep = Signature::new("t.leaf");
        for _ in 0..100 {
            let mut chain = Signature::new("celery.chain");
            chain.subtask_type = Some("chain".into());
            chain.kwargs.insert("tasks".into(), Value::List(vec![deep.to_value()]));
            deep = chain;
        }
        assert!(plan("r", &deep, Call::default()).is_err());
    }
}
