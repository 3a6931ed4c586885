//! Feeds arbitrary bytes to every decoder a broker message passes through: the
//! Redis envelope, the `unacked` record, the task message (v1/v2, every codec,
//! every compression) and the result record, within decode limits. A decoder
//! may refuse the input; it must never panic, what it accepts must respect the
//! limits and re-encode and decode to the same.
#![no_main]

use celeriac_protocol::codec::{self, ContentType};
use celeriac_protocol::envelope::Envelope;
use celeriac_protocol::limits::DecodeLimits;
use celeriac_protocol::{json, msgpack, yaml, TaskMessage, Value};
use libfuzzer_sys::fuzz_target;

/// Small bounds, so that the fuzzer reaches them.
fn limits() -> DecodeLimits {
    DecodeLimits {
        max_body_bytes: 1 << 20,
        max_decoded_bytes: 1 << 20,
        max_depth: 32,
        max_elements: 5_000,
        ..DecodeLimits::any_content()
    }
}

/// Lists and dicts nested in `v` (0 for a scalar), and every value in it, dict keys included.
fn shape(v: &Value) -> (usize, usize) {
    match v {
        Value::List(items) => items.iter().map(shape).fold((1, 1), |(d, n), (cd, cn)| (d.max(cd + 1), n + cn)),
        Value::Map(map) => map.values().map(shape).fold((1, 1), |(d, n), (cd, cn)| (d.max(cd + 1), n + cn + 1)),
        _ => (0, 1),
    }
}

fn within(v: &Value, limits: &DecodeLimits, what: &str) {
    let (depth, count) = shape(v);
    assert!(depth <= limits.max_depth, "{what}: depth {depth} past the limit {}", limits.max_depth);
    assert!(count <= limits.max_elements, "{what}: {count} values past the limit {}", limits.max_elements);
}

fuzz_target!(|data: &[u8]| {
    let limits = limits();
    if let Ok(env) = Envelope::from_slice(data) {
        let text = env.to_json();
        if let Ok(text) = text {
            let again = Envelope::from_slice(text.as_bytes()).expect("re-encoded envelope must decode");
            assert_eq!(again, env);
        }
        if let Ok(task) = TaskMessage::from_message_with_limit(&env.message, 1 << 20) {
            let _ = task.body_value();
            let _ = task.header_map();
        }
        if let Ok(task) = TaskMessage::from_message_with(&env.message, &limits) {
            within(&task.body_value(), &limits, "task body");
            for s in [task.headers.timelimit.hard, task.headers.timelimit.soft].into_iter().flatten() {
                let _ = s.to_duration();
            }
            let _ = task.headers.eta_instant();
            let _ = task.headers.expires_instant();
        }
        if let Ok(bounded) = Envelope::from_slice_with(data, &limits) {
            assert_eq!(bounded, env, "a bounded decode must agree with the unbounded one");
        }
    } else {
        assert!(Envelope::from_slice_with(data, &limits).is_err(), "bounded decode accepted what the unbounded refused");
    }
    let _ = Envelope::from_unacked_slice(data);
    if let Ok(v) = json::from_slice(data) {
        let text = json::to_string(&v).expect("a decoded value must encode");
        assert_eq!(json::from_str(&text).expect("re-encoded JSON must decode"), v);
        let _ = celeriac_protocol::result::ResultMeta::from_value(&v);
    }
    if let Ok(v) = json::from_slice_with(data, &limits) {
        within(&v, &limits, "json");
    }
    if let Ok(v) = msgpack::from_slice(data) {
        let bytes = msgpack::to_vec(&v).expect("a decoded msgpack value must encode");
        assert_eq!(msgpack::from_slice(&bytes).expect("re-encoded msgpack must decode"), v);
    }
    if let Ok(v) = msgpack::from_slice_with(data, &limits) {
        within(&v, &limits, "msgpack");
    }
    let _ = codec::decode(ContentType::Yaml, data);
    if let Ok(v) = yaml::from_slice_with(data, &limits) {
        within(&v, &limits, "yaml");
    }
});
