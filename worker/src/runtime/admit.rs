//! Admission: the first stage a delivery passes. It decides, from the message
//! alone and what the worker knows (its tasks, the revoked ids, the clock),
//! whether a task may run, before anything is spent on it:
//!
//! - a message that is not an acceptable task message is [`Refusal`]: its
//!   content type is not in `accept_content` (checked before any decoding,
//!   as kombu does), it is larger than `worker_max_message_size`, or it does
//!   not decode. Refused messages are dead-lettered with the reason, never
//!   dropped;
//! - a decoded task is then [`Verdict::Unknown`] (no such task here),
//!   [`Verdict::Revoked`], [`Verdict::Expired`], or [`Verdict::Run`].

use celeriac_protocol::limits::{Accept, DecodeLimits};
use celeriac_protocol::{Message, TaskMessage};
use tracing::warn;

use crate::state::WorkerState;
use crate::{Registry, Task};

/// What a worker accepts of a message before decoding it, and the bounds of
/// decoding (the protocol's [`DecodeLimits`]).
#[derive(Clone, Debug)]
pub(crate) struct Acceptance {
    limits: DecodeLimits,
}

impl Acceptance {
    /// From `accept_content` (kombu names or MIME types) and
    /// `worker_max_message_size`. Names the settings would refuse fall back
    /// to Celery's default, JSON only.
    pub(crate) fn new(accept: &[String], max_size: usize) -> Acceptance {
        let accept = Accept::from_names(accept).unwrap_or_else(|e| {
            warn!("accept_content: {e}; accepting JSON only");
            Accept::json()
        });
        Acceptance { limits: DecodeLimits::new(accept, max_size) }
    }

    /// The decoding bounds (also those a held message is read again within).
    pub(crate) fn limits(&self) -> &DecodeLimits {
        &self.limits
    }
}

/// A message that will not run (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// What is wrong with it, as one word (the metric label).
    pub kind: &'static str,
    /// The reason, for the log and the `x-celeriac-error` header
    /// (`<kind>: <what happened>`).
    pub reason: String,
}

/// Decodes a task message within `acceptance`: the content type first, then
/// the raw size, then decompression and parsing within their bounds.
pub(crate) fn decode(message: &Message, acceptance: &Acceptance) -> Result<TaskMessage, Refusal> {
    TaskMessage::from_message_with(message, &acceptance.limits)
        .map_err(|e| Refusal { kind: e.kind().as_str(), reason: e.reason() })
}

/// What happens to a decoded task.
pub(crate) enum Verdict<'r> {
    /// Run it with this definition.
    Run(&'r Task),
    /// No task of that name is registered here.
    Unknown,
    /// Its id was revoked.
    Revoked,
    /// Its `expires` has passed.
    Expired,
}

/// Decides what happens to `task` (see the module docs). Checked again, for
/// revocation and expiry, right before the task starts.
pub(crate) fn admit<'r>(
    registry: &'r Registry,
    state: &WorkerState,
    task: &TaskMessage,
    now: jiff::Timestamp,
) -> Verdict<'r> {
    let Some(def) = registry.get(&task.headers.task) else { return Verdict::Unknown };
    match still_wanted(state, task, now) {
        Some(verdict) => verdict,
        None => Verdict::Run(def),
    }
}

/// `Revoked` (by id, or by one of its stamps) or `Expired` if the task must
/// not start now, else `None`.
pub(crate) fn still_wanted<'r>(state: &WorkerState, task: &TaskMessage, now: jiff::Timestamp) -> Option<Verdict<'r>> {
    if state.revoked().contains(&task.headers.id) {
        return Some(Verdict::Revoked);
    }
    if let Some(stamped) = &task.headers.stamped_headers {
        if let Some((header, value)) = state.revoked_stamps().matching(stamped, &task.headers.stamps) {
            let shown = celeriac_protocol::result::python_repr(&value);
            tracing::info!("{}[{}] is revoked by header: {{'{header}': {shown}}}", task.headers.task, task.headers.id);
            return Some(Verdict::Revoked);
        }
    }
    if task.headers.expires_instant().is_some_and(|at| at <= now) {
        return Some(Verdict::Expired);
    }
    None
}

#[cfg(test)]
mod tests {
    use celeriac_protocol::codec::{Compression, ContentType};
    use celeriac_protocol::{Map, Value};

    use super::*;
    use crate::TaskError;

    async fn nothing() -> Result<(), TaskError> {
        Ok(())
    }

    fn message(content_type: ContentType, compression: Option<Compression>) -> Message {
        let task = TaskMessage::new("tasks.nothing", "id-1");
        task.to_message(task.default_properties(None, None), 0, content_type, compression).unwrap()
    }

    fn json_only() -> Acceptance {
        Acceptance::new(&["json".into()], 1 << 20)
    }

    #[test]
    fn content_types_outside_accept_content_are_refused_before_decoding() {
        let ok = decode(&message(ContentType::Json, None), &json_only());
        assert!(ok.is_ok(), "{ok:?}");
        let refused = decode(&message(ContentType::Msgpack, None), &json_only()).unwrap_err();
        assert_eq!(refused.kind, "content_disallowed");
        assert!(refused.reason.contains("application/x-msgpack"), "{}", refused.reason);
        // Pickle is never accepted, even when named, and its body is never read.
        let mut pickle = message(ContentType::Json, None);
        pickle.content_type = "application/x-python-serialize".into();
        pickle.body = b"\x80\x04cos\nsystem\n".to_vec();
        let both = Acceptance::new(&["json".into(), "pickle".into()], 1 << 20);
        assert_eq!(decode(&pickle, &both).unwrap_err().kind, "content_disallowed");
        // A content type of any length is reported, shortened.
        let mut odd = message(ContentType::Json, None);
        odd.content_type = "x".repeat(1 << 20);
        let refused = decode(&odd, &json_only()).unwrap_err();
        assert!(refused.reason.len() <= celeriac_protocol::error::MAX_REASON + 3, "{}", refused.reason.len());
        // MIME types and kombu names are the same thing.
        let mime = Acceptance::new(&["application/x-msgpack".into()], 1 << 20);
        assert!(decode(&message(ContentType::Msgpack, None), &mime).is_ok());
    }

    #[test]
    fn large_bodies_are_refused_raw_and_once_decompressed() {
        let mut big = message(ContentType::Json, None);
        let mut kwargs = Map::new();
        kwargs.insert("blob".into(), Value::Str("a".repeat(4096)));
        let mut task = TaskMessage::new("tasks.nothing", "id-1");
        task.kwargs = kwargs;
        let small_limit = Acceptance::new(&["json".into()], 1024);
        big.body = task.to_message(task.default_properties(None, None), 0, ContentType::Json, None).unwrap().body;
        assert_eq!(decode(&big, &small_limit).unwrap_err().kind, "body_too_large");
        // Compressed, it is small on the wire but not once inflated.
        let zipped = task
            .to_message(task.default_properties(None, None), 0, ContentType::Json, Some(Compression::Zlib))
            .unwrap();
        assert!(zipped.body.len() < 1024);
        let refused = decode(&zipped, &small_limit).unwrap_err();
        assert_eq!(refused.kind, "decoded_too_large", "{refused:?}");
    }

    #[test]
    fn verdicts() {
        let registry = Registry::new().with(Task::new("tasks.nothing", nothing));
        let state = crate::state::WorkerState::new(None);
        let revoked = state.revoked();
        let revoked_state = &state;
        let now = jiff::Timestamp::now();
        let mut task = TaskMessage::new("tasks.nothing", "id-1");
        assert!(matches!(admit(&registry, revoked_state, &task, now), Verdict::Run(_)));
        task.headers.expires = Some(celeriac_protocol::time::PyDateTime::from_timestamp(
            now - jiff::SignedDuration::from_secs(1),
            jiff::tz::Offset::UTC,
        ));
        assert!(matches!(admit(&registry, revoked_state, &task, now), Verdict::Expired));
        revoked.add(["id-1"]);
        assert!(matches!(admit(&registry, revoked_state, &task, now), Verdict::Revoked));
        task.headers.task = "tasks.other".into();
        assert!(matches!(admit(&registry, revoked_state, &task, now), Verdict::Unknown));
    }
}
