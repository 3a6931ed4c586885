//! Hostile messages made by the real kombu and Celery (`.venv`), decoded by
//! celeriac within its limits, side by side with what Python makes of them.
//!
//! `protocol/tests/python/hostile_producer.py` publishes each message with kombu onto a
//! private redis-server, takes the raw list element back, and reports what
//! kombu (`accept_content` json only, and json+msgpack+yaml) and Celery's
//! worker `Request` do with it. Here each element goes through
//! `Envelope::from_slice_with` and `TaskMessage::from_message_with` and must
//! end in the expected typed error (or the expected values), and wherever
//! Python refuses a message celeriac refuses it too. The cases where celeriac
//! refuses what Python accepts are listed with their reasons.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed assertion

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use celeriac_protocol::envelope::Envelope;
use celeriac_protocol::limits::{Accept, DecodeLimits, ErrorKind};
use celeriac_protocol::task::{Seconds, TaskMessage};
use celeriac_protocol::{json, Map, ProtocolError, Value};

const MIB: usize = 1024 * 1024;

/// One published message and Python's verdicts on it.
struct Case {
    envelope: String,
    kombu_json: String,
    kombu_all: String,
    request: Map,
    priority: Value,
}

fn produce() -> Option<BTreeMap<String, Case>> {
    let (Some(redis), Some(python)) = (celeriac_tests::redis(), celeriac_tests::python_peer()) else { return None };
    let script = celeriac_tests::repo_root().join("protocol/tests/python/hostile_producer.py");
    let out = Command::new(python).arg(script).args(["--redis-url", &redis.url()]).output().unwrap();
    assert!(
        out.status.success(),
        "hostile_producer.py failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut cases = BTreeMap::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let v = json::from_str(line).unwrap();
        let text =
            |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_else(|| panic!("{k} in {line:.200}")).to_owned();
        let case = Case {
            envelope: text("envelope"),
            kombu_json: text("kombu_json"),
            kombu_all: text("kombu_all"),
            request: v.get("request").and_then(Value::as_map).unwrap().clone(),
            priority: v.get("priority").unwrap().clone(),
        };
        cases.insert(text("name"), case);
    }
    Some(cases)
}

fn decode(case: &Case, limits: &DecodeLimits) -> Result<TaskMessage, ProtocolError> {
    let env = Envelope::from_slice_with(case.envelope.as_bytes(), limits)?;
    TaskMessage::from_message_with(&env.message, limits)
}

fn kind(case: &Case, limits: &DecodeLimits) -> Option<ErrorKind> {
    decode(case, limits).err().map(|e| e.kind())
}

fn python_request_ok(case: &Case) -> bool {
    case.request.get("ok") == Some(&Value::Bool(true))
}

fn request_field<'a>(case: &'a Case, name: &str) -> &'a Value {
    case.request.get(name).unwrap_or_else(|| panic!("request has no {name}"))
}

/// A time limit as a float, whichever way it came (Python int or float).
fn as_float(v: &Value) -> Option<f64> {
    match v {
        Value::BigInt(b) => Some(b.to_f64()),
        other => other.as_f64(),
    }
}

#[test]
fn hostile_messages_from_kombu_end_in_typed_errors() {
    let Some(cases) = produce() else { return };
    let case = |name: &str| cases.get(name).unwrap_or_else(|| panic!("no case {name}"));
    let default = DecodeLimits::default();
    let every = Accept::from_names(["json", "msgpack", "yaml"]).unwrap();
    let all = DecodeLimits { accept: every.clone(), ..DecodeLimits::default() };
    let four_mib = DecodeLimits::new(Accept::json(), 4 * MIB);

    // Decompression bombs. zlib inflating to 80 MiB stops at the default 64 MiB
    // (Python's kombu inflates all of it); every method stops at 4 MiB.
    let started = Instant::now();
    assert_eq!(kind(case("zlib_bomb_80mib"), &default), Some(ErrorKind::DecodedTooLarge));
    assert_eq!(case("zlib_bomb_80mib").kombu_json, "ok");
    assert!(started.elapsed() < Duration::from_secs(60), "{:?}", started.elapsed());
    for method in ["zlib", "bzip2", "lzma", "zstd", "brotli"] {
        let c = case(&format!("{method}_bomb_8mib"));
        assert_eq!(kind(c, &four_mib), Some(ErrorKind::DecodedTooLarge), "{method}");
        // Within the default limits it decodes, as in Python.
        let task = decode(c, &default).unwrap_or_else(|e| panic!("{method}: {e}"));
        assert_eq!(task.args[0].as_str().map(str::len), Some(8 * MIB), "{method}");
        assert_eq!(c.kombu_json, "ok", "{method}");
    }

    // A billion laughs: refused by content type by default, like kombu; with
    // yaml accepted, refused once alias copies pass the bound (PyYAML shares
    // the aliased objects, so Python reads it).
    let laughs = case("yaml_billion_laughs");
    assert_eq!(kind(laughs, &default), Some(ErrorKind::ContentDisallowed));
    assert_eq!(laughs.kombu_json, "ContentDisallowed");
    let started = Instant::now();
    assert_eq!(kind(laughs, &all), Some(ErrorKind::TooManyElements));
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    assert_eq!(laughs.kombu_all, "ok");

    // JSON nesting: Python gives up on 100 000 levels too; 600 levels it reads
    // and celeriac refuses (its bound is 512).
    assert_eq!(kind(case("json_deep_100k"), &default), Some(ErrorKind::TooDeep));
    assert_eq!(case("json_deep_100k").kombu_json, "DecodeError");
    assert_eq!(kind(case("json_deep_600"), &default), Some(ErrorKind::TooDeep));
    assert_eq!(case("json_deep_600").kombu_json, "ok");
    // An int of 5000 digits: Python's json refuses it, and so does celeriac.
    assert_eq!(kind(case("json_int_5000_digits"), &default), Some(ErrorKind::MalformedBody));
    assert_eq!(case("json_int_5000_digits").kombu_json, "DecodeError");

    // msgpack headers claiming 2^32 elements: refused by content type, or by
    // the value bound without allocating, as Python's msgpack refuses them.
    for name in ["msgpack_array32_header", "msgpack_map32_header"] {
        let c = case(name);
        assert_eq!(kind(c, &default), Some(ErrorKind::ContentDisallowed), "{name}");
        assert_eq!(c.kombu_json, "ContentDisallowed", "{name}");
        assert_eq!(kind(c, &all), Some(ErrorKind::TooManyElements), "{name}");
        assert_eq!(c.kombu_all, "DecodeError", "{name}");
    }
    // Pickle, whatever is accepted.
    assert_eq!(kind(case("pickle_body"), &default), Some(ErrorKind::ContentDisallowed));
    assert_eq!(kind(case("pickle_body"), &DecodeLimits::any_content()), Some(ErrorKind::ContentDisallowed));
    assert_eq!(case("pickle_body").kombu_json, "ContentDisallowed");
    // The raw size, before anything else is done with the body.
    assert!(decode(case("json_2mib"), &default).is_ok());
    let one_mib = DecodeLimits::new(Accept::json(), MIB);
    let env = Envelope::from_slice_with(case("json_2mib").envelope.as_bytes(), &default).unwrap();
    let err = TaskMessage::from_message_with(&env.message, &one_mib).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BodyTooLarge, "{err}");
    assert!(err.reason().starts_with("body_too_large: message body is 2097"), "{}", err.reason());
    // Its Redis element (base64, 2.8 MB) is refused before parsing, too.
    let err = Envelope::from_slice_with(case("json_2mib").envelope.as_bytes(), &one_mib).unwrap_err();
    assert!(matches!(err, ProtocolError::EnvelopeTooLarge { .. }), "{err}");
    assert_eq!(err.kind(), ErrorKind::BodyTooLarge);
}

#[test]
fn hostile_headers_from_celery_are_kept_or_refused_by_field() {
    let Some(cases) = produce() else { return };
    let case = |name: &str| cases.get(name).unwrap_or_else(|| panic!("no case {name}"));
    let limits = DecodeLimits::default();

    // Numbers Celery's Request reads as they are: kept as they are.
    for name in ["timelimit_nan_inf", "timelimit_1e300_negative", "timelimit_huge_int"] {
        let c = case(name);
        assert!(python_request_ok(c), "{name}");
        let task = decode(c, &limits).unwrap_or_else(|e| panic!("{name}: {e}"));
        let python = request_field(c, "time_limits").as_list().unwrap();
        let ours = [task.headers.timelimit.hard, task.headers.timelimit.soft];
        for (mine, theirs) in ours.iter().zip(python) {
            let mine = mine.map(Seconds::as_f64);
            let theirs = as_float(theirs);
            let same = match (mine, theirs) {
                (Some(a), Some(b)) => (a.is_nan() && b.is_nan()) || a == b,
                (a, b) => a == b,
            };
            assert!(same, "{name}: celeriac {mine:?}, Celery {theirs:?}");
        }
        // And each maps to a Duration without panicking.
        for s in ours.into_iter().flatten() {
            let _ = s.to_duration();
        }
    }
    let nan_inf = decode(case("timelimit_nan_inf"), &limits).unwrap().headers.timelimit;
    assert_eq!(nan_inf.hard.unwrap().to_duration(), None);
    assert_eq!(nan_inf.soft.unwrap().to_duration(), Some(celeriac_protocol::time::MAX_DURATION));

    // Year 9999 with a negative offset: read as Celery reads it, "never" as an instant.
    let far = case("eta_year_9999");
    let task = decode(far, &limits).unwrap();
    assert_eq!(Value::Str(task.headers.eta.unwrap().to_iso()), *request_field(far, "eta"));
    assert_eq!(task.headers.eta_instant(), Some(jiff::Timestamp::MAX));

    // What Celery's Request refuses (InvalidTaskError), celeriac refuses, naming the header.
    for (name, header) in
        [("eta_garbage", "eta"), ("expires_garbage", "expires"), ("eta_number", "eta"), ("expires_list", "expires")]
    {
        let c = case(name);
        assert_eq!(request_field(c, "error"), &Value::Str("InvalidTaskError".into()), "{name}");
        match decode(c, &limits) {
            Err(ProtocolError::Header { name: got, .. }) => assert_eq!(got, header, "{name}"),
            other => panic!("{name}: {other:?}"),
        }
    }

    // Refused here though Celery's Request takes them: each fails in Celery
    // only later, when the worker does arithmetic with the value (a string
    // time limit in the pool's timer, `retries + 1` on retry, unpacking three
    // limits into two), so celeriac dead-letters them on receipt instead.
    for (name, header) in [
        ("timelimit_string", "timelimit"),
        ("timelimit_three", "timelimit"),
        ("retries_string", "retries"),
        ("retries_nan", "retries"),
        ("group_index_float", "group_index"),
    ] {
        let c = case(name);
        assert!(python_request_ok(c), "{name}: Celery's Request refused it too");
        let err = decode(c, &limits).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidHeader, "{name}: {err}");
        assert!(matches!(&err, ProtocolError::Header { name: got, .. } if got == header), "{name}: {err}");
    }

    // Priorities kombu clamps or ignores: the same queue step as kombu picks
    // (celeriac keeps 0..=255, the Redis transport caps at 9 as kombu does).
    for name in
        ["priority_300", "priority_negative", "priority_1e300", "priority_nan", "priority_text", "priority_float"]
    {
        let c = case(name);
        let env = Envelope::from_slice_with(c.envelope.as_bytes(), &limits).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(Value::Int(i64::from(env.message.priority.min(9))), c.priority, "{name}");
        assert!(decode(c, &limits).is_ok(), "{name}");
    }
}

/// Numbers at the edges, read by kombu's JSON and by celeriac's, and written
/// back: the same text (or both refuse).
#[test]
fn edge_numbers_read_and_write_as_kombu_does() {
    let Some(python) = celeriac_tests::python_peer() else { return };
    let texts = [
        "1e400",
        "-1e400",
        "1e-400",
        "NaN",
        "Infinity",
        "-Infinity",
        "1E999999999999999999999",
        "-0",
        "-0.0",
        "1.7976931348623157e308",
        "1.7976931348623159e308",
        "4.9e-324",
        "2.5e-5",
        "1e16",
        "123456789012345678901234567890",
        "[9223372036854775807, 9223372036854775808, -9223372036854775809]",
        "nan",
        "inf",
        "+1",
        "01",
        "1.",
        ".5",
    ];
    let input = json::to_string(&Value::List(texts.iter().map(|t| Value::Str((*t).into())).collect())).unwrap();
    let script = r#"
import json, sys
from kombu.utils.json import dumps, loads
out = []
for text in json.loads(sys.argv[1]):
    try:
        out.append(dumps(loads(text)))
    except Exception as exc:
        out.append("error")
print(json.dumps(out))
"#;
    let out = Command::new(python).args(["-c", script, &input]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let python = json::from_slice(&out.stdout).unwrap();
    for (text, theirs) in texts.iter().zip(python.as_list().unwrap()) {
        let ours = json::from_str(text).map_or_else(|_| "error".to_owned(), |v| json::to_string(&v).unwrap());
        assert_eq!(Some(ours.as_str()), theirs.as_str(), "{text}");
    }
}
