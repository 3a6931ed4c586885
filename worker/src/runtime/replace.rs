//! `Task.replace`: what a task that asked to be replaced is replaced with,
//! built as Celery 5.7 builds it (`celery.app.task.Task.replace`), as a pure
//! function of the request and the signature:
//!
//! - a group becomes a chord whose body is `celery.accumulate(index=0)` (so
//!   the replaced task's result is the list of the group's results), and so
//!   does a group that ends a chain;
//! - the request's links and error links are linked to the replacement;
//! - it is frozen with the replaced task's id (a chain's last task, a
//!   chord's body), so whoever waits for that id gets the replacement's result;
//! - it takes the request's place in a group or chord (`group_id`,
//!   `group_index`, `chord`) and `replaced_task_nesting` + 1;
//! - the rest of the request's chain follows it.

use celeriac_protocol::signature::SignatureKind;
use celeriac_protocol::task::TaskMessage;
use celeriac_protocol::{Map, Signature, Value};

/// The built-in task a group replacement's results go through.
pub(crate) const ACCUMULATE: &str = "celery.accumulate";

/// The replacement for `request` asked as `sig`, or Celery's
/// `ImproperlyConfigured` message when it cannot be one.
pub(super) fn replacement(request: &TaskMessage, mut sig: Signature) -> Result<Signature, String> {
    if sig.options.contains_key("chord") {
        return Err("A signature replacing a task must not be part of a chord".into());
    }
    if sig.kind() == SignatureKind::Chain && members(&sig, "tasks").is_empty() {
        return Err("Cannot replace with an empty chain".into());
    }
    if sig.kind() == SignatureKind::Group {
        sig = chord(sig, accumulate());
    }
    if sig.kind() == SignatureKind::Chain {
        let mut tasks = members(&sig, "tasks");
        if let Some(last) = tasks.pop() {
            tasks.push(if last.kind() == SignatureKind::Group { chord(last, accumulate()) } else { last });
        }
        set_members(&mut sig, "tasks", &tasks);
    }
    for callback in request.embed.callbacks.iter().flatten() {
        link(&mut sig, "link", callback.clone());
    }
    for errback in request.embed.errbacks.iter().flatten() {
        link(&mut sig, "link_error", errback.clone());
    }
    // A chain's own links move down to its last task, so they run when it
    // ends even with the rest of the request's chain piped on below.
    if sig.kind() == SignatureKind::Chain {
        for callback in take_links(&mut sig, "link") {
            link(&mut sig, "link", callback);
        }
    }
    freeze_as(&mut sig, &request.headers.id);
    let nesting = Value::Int(request.headers.replaced_task_nesting.saturating_add(1));
    let mut place = Map::new();
    if let Some(chord) = &request.embed.chord {
        place.insert("chord".into(), chord.to_value());
    }
    if let Some(group) = &request.headers.group {
        place.insert("group_id".into(), Value::Str(group.clone()));
    }
    if let Some(index) = request.headers.group_index {
        place.insert("group_index".into(), Value::Int(index));
    }
    if let Some(root) = &request.headers.root_id {
        place.insert("root_id".into(), Value::Str(root.clone()));
    }
    place.insert("replaced_task_nesting".into(), nesting.clone());
    set(&mut sig, place, &nesting);
    // The rest of the request's chain, in order (it is stored next step last).
    for next in request.embed.chain.iter().flatten().rev() {
        let mut next = next.clone();
        next.options.insert("replaced_task_nesting".into(), nesting.clone());
        sig = pipe(sig, next);
    }
    Ok(sig)
}

/// `celery.accumulate.s(index=0)`.
fn accumulate() -> Signature {
    let mut sig = Signature::new(ACCUMULATE);
    sig.kwargs.insert("index".into(), Value::Int(0));
    sig
}

fn canvas(kind: &str, kwargs: Map) -> Signature {
    let mut sig = Signature::new(format!("celery.{kind}"));
    sig.subtask_type = Some(kind.into());
    sig.kwargs = kwargs;
    sig
}

/// `chord(header, body)` as Celery writes it.
fn chord(header: Signature, body: Signature) -> Signature {
    let mut kwargs = Map::new();
    kwargs.insert("kwargs".into(), Value::Map(Map::new()));
    kwargs.insert("header".into(), header.to_value());
    kwargs.insert("body".into(), body.to_value());
    canvas("chord", kwargs)
}

/// `chain(tasks...)`.
fn chain(tasks: &[Signature]) -> Signature {
    let mut kwargs = Map::new();
    kwargs.insert("tasks".into(), Value::List(tasks.iter().map(Signature::to_value).collect()));
    canvas("chain", kwargs)
}

/// The signatures of option `key` of `sig`, taken out of its options.
fn take_links(sig: &mut Signature, key: &str) -> Vec<Signature> {
    super::signatures_in(sig.options.shift_remove(key).as_ref())
}

/// `a | b`: a chain grows (its own links and error links first go down to
/// its tasks, as Celery's `unchain_tasks`), a chord's body grows, a task
/// becomes a chain.
fn pipe(a: Signature, b: Signature) -> Signature {
    match a.kind() {
        SignatureKind::Chain => {
            let mut a = a;
            for callback in take_links(&mut a, "link") {
                link(&mut a, "link", callback);
            }
            for errback in take_links(&mut a, "link_error") {
                link(&mut a, "link_error", errback);
            }
            let mut tasks = members(&a, "tasks");
            tasks.push(b);
            set_members(&mut a, "tasks", &tasks);
            a
        }
        SignatureKind::Chord => {
            let mut a = a;
            if let Some(body) = part(&a, "body") {
                a.kwargs.insert("body".into(), pipe(body, b).to_value());
            }
            a
        }
        _ => chain(&[a, b]),
    }
}

fn members(sig: &Signature, key: &str) -> Vec<Signature> {
    match sig.kwargs.get(key) {
        Some(Value::List(items)) => items.iter().filter_map(|v| Signature::from_value(v).ok()).collect(),
        _ => Vec::new(),
    }
}

fn set_members(sig: &mut Signature, key: &str, items: &[Signature]) {
    sig.kwargs.insert(key.into(), Value::List(items.iter().map(Signature::to_value).collect()));
}

fn part(sig: &Signature, key: &str) -> Option<Signature> {
    sig.kwargs.get(key).and_then(|v| Signature::from_value(v).ok())
}

/// Appends `callback` to the option `key` (`link`, `link_error`) where
/// Celery links it: a task itself, a chain's last task (errors: every task),
/// a chord's body.
fn link(sig: &mut Signature, key: &str, callback: Signature) {
    match sig.kind() {
        SignatureKind::Chain => {
            let mut tasks = members(sig, "tasks");
            let targets: Vec<usize> = if key == "link" {
                tasks.len().checked_sub(1).into_iter().collect()
            } else {
                (0..tasks.len()).collect()
            };
            for i in targets {
                if let Some(task) = tasks.get_mut(i) {
                    link(task, key, callback.clone());
                }
            }
            set_members(sig, "tasks", &tasks);
        }
        SignatureKind::Chord => {
            if let Some(mut body) = part(sig, "body") {
                link(&mut body, key, callback);
                sig.kwargs.insert("body".into(), body.to_value());
            }
        }
        _ => {
            let entry = sig.options.entry(key.to_owned()).or_insert_with(|| Value::List(Vec::new()));
            match entry {
                Value::List(items) => items.push(callback.to_value()),
                other => *other = Value::List(vec![other.clone(), callback.to_value()]),
            }
        }
    }
}

/// Celery's `sig.freeze(id)`: a task takes the id, a chain's last task
/// does, a chord's body does.
fn freeze_as(sig: &mut Signature, id: &str) {
    match sig.kind() {
        SignatureKind::Chain => {
            let mut tasks = members(sig, "tasks");
            if let Some(last) = tasks.last_mut() {
                freeze_as(last, id);
            }
            set_members(sig, "tasks", &tasks);
        }
        SignatureKind::Chord => {
            if let Some(mut body) = part(sig, "body") {
                freeze_as(&mut body, id);
                sig.kwargs.insert("body".into(), body.to_value());
            }
        }
        _ => {
            sig.options.insert("task_id".into(), Value::Str(id.to_owned()));
        }
    }
}

/// Celery's `sig.set(**place)`: on a task, its options; a chain's go to
/// its last task (and the nesting to every task); a chord's to its body,
/// but for the group id, which is the chord's own.
fn set(sig: &mut Signature, place: Map, nesting: &Value) {
    match sig.kind() {
        SignatureKind::Chain => {
            let mut tasks = members(sig, "tasks");
            for task in tasks.iter_mut() {
                task.options.insert("replaced_task_nesting".into(), nesting.clone());
            }
            if let Some(last) = tasks.last_mut() {
                set(last, place, nesting);
            }
            set_members(sig, "tasks", &tasks);
        }
        SignatureKind::Chord => {
            sig.options.insert("replaced_task_nesting".into(), nesting.clone());
            if let Some(mut body) = part(sig, "body") {
                let place: Map = place.into_iter().filter(|(k, _)| k != "group_id").collect();
                set(&mut body, place, nesting);
                sig.kwargs.insert("body".into(), body.to_value());
            }
        }
        _ => sig.options.extend(place),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> TaskMessage {
        let mut t = TaskMessage::new("tasks.replaced", "replaced-id");
        t.headers.root_id = Some("root".into());
        t.headers.replaced_task_nesting = 1;
        t.embed.chain = Some(vec![Signature::new("tasks.last"), Signature::new("tasks.next")]);
        t
    }

    fn opt<'a>(sig: &'a Signature, key: &str) -> Option<&'a Value> {
        sig.options.get(key)
    }

    #[test]
    fn a_task_replacement_takes_the_id_and_the_rest_of_the_chain() {
        let sig = replacement(&request(), Signature::new("tasks.add")).unwrap();
        assert_eq!(sig.kind(), SignatureKind::Chain);
        let tasks = members(&sig, "tasks");
        let names: Vec<&str> = tasks.iter().map(|t| t.task.as_str()).collect();
        assert_eq!(names, ["tasks.add", "tasks.next", "tasks.last"]);
        assert_eq!(opt(&tasks[0], "task_id"), Some(&Value::Str("replaced-id".into())));
        assert_eq!(opt(&tasks[0], "root_id"), Some(&Value::Str("root".into())));
        for t in &tasks {
            assert_eq!(opt(t, "replaced_task_nesting"), Some(&Value::Int(2)), "{}", t.task);
        }
    }

    #[test]
    fn a_group_becomes_a_chord_accumulating_into_the_replaced_id() {
        let mut group = Signature::new("celery.group");
        group.subtask_type = Some("group".into());
        group.kwargs.insert("tasks".into(), Value::List(vec![Signature::new("tasks.add").to_value()]));
        let mut request = request();
        request.embed.chain = Some(vec![Signature::new("tasks.tsum")]);
        let sig = replacement(&request, group).unwrap();
        assert_eq!(sig.kind(), SignatureKind::Chord);
        let body = part(&sig, "body").unwrap();
        assert_eq!(body.kind(), SignatureKind::Chain);
        let steps = members(&body, "tasks");
        assert_eq!(steps[0].task, ACCUMULATE);
        assert_eq!(steps[0].kwargs.get("index"), Some(&Value::Int(0)));
        assert_eq!(opt(&steps[0], "task_id"), Some(&Value::Str("replaced-id".into())));
        assert_eq!(steps[1].task, "tasks.tsum");
    }

    #[test]
    fn what_cannot_replace_a_task() {
        let mut in_chord = Signature::new("tasks.add");
        in_chord.options.insert("chord".into(), Signature::new("body").to_value());
        assert!(replacement(&request(), in_chord).is_err());
        let empty = chain(&[]);
        assert_eq!(replacement(&request(), empty).unwrap_err(), "Cannot replace with an empty chain");
    }

    #[test]
    fn a_chain_replacement_keeps_its_own_links_on_its_last_task() {
        let mut with = chain(&[Signature::new("t.a"), Signature::new("t.b")]);
        with.options.insert("link".into(), Value::List(vec![Signature::new("t.echo").to_value()]));
        let mut request = request();
        request.embed.chain = Some(vec![Signature::new("t.next")]);
        let sig = replacement(&request, with).unwrap();
        let tasks = members(&sig, "tasks");
        assert!(sig.options.get("link").is_none(), "not linked twice");
        let on_b = tasks.iter().find(|t| t.task == "t.b").and_then(|t| t.options.get("link")).cloned();
        assert_eq!(on_b, Some(Value::List(vec![Signature::new("t.echo").to_value()])));
    }

    #[test]
    fn links_go_where_celery_puts_them() {
        let mut request = request();
        request.embed.chain = None;
        request.embed.callbacks = Some(vec![Signature::new("tasks.cb")]);
        request.embed.errbacks = Some(vec![Signature::new("tasks.eb")]);
        let sig = replacement(&request, chain(&[Signature::new("a"), Signature::new("b")])).unwrap();
        let tasks = members(&sig, "tasks");
        assert!(opt(&tasks[0], "link").is_none());
        assert!(opt(&tasks[1], "link").is_some());
        assert!(opt(&tasks[0], "link_error").is_some() && opt(&tasks[1], "link_error").is_some());
    }
}
