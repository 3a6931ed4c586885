//! Golden fixtures captured from real Celery/kombu (`tests/fixtures/`): every one
//! decodes to what Python decoded, and re-encodes to the very bytes kombu wrote
//! (or, for compressed bodies, whose compressor output may differ, to a body that
//! decodes the same).
//!
//! Python's side of the check — kombu decoding celeriac's re-encodings — runs in
//! `celeriac-tests` (`tests/tests/protocol_interop.rs`), where the Python peer is.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed assertion

use celeriac_protocol::codec::{CodecError, ContentType};
use celeriac_protocol::envelope::Envelope;
use celeriac_protocol::task::{Protocol, TaskMessage};
use celeriac_protocol::{json, Map, ProtocolError, Value};

fn load(kind: &str) -> Vec<(String, Map)> {
    celeriac_tests::fixture_files(kind)
        .unwrap()
        .into_iter()
        .map(|(name, text)| {
            let value = json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            (name, value.as_map().unwrap().clone())
        })
        .collect()
}

fn str_field<'a>(map: &'a Map, key: &str) -> &'a str {
    map.get(key).and_then(Value::as_str).unwrap_or_else(|| panic!("fixture field {key} missing"))
}

/// Python's full `message.properties`: the publisher's, plus kombu's bookkeeping.
fn full_properties(env: &Envelope) -> Map {
    let mut props = env.message.properties.clone();
    let mut info = Map::new();
    info.insert("exchange".into(), env.delivery_info.exchange.clone().into());
    info.insert("routing_key".into(), env.delivery_info.routing_key.clone().into());
    if let Some(r) = env.delivery_info.redelivered {
        info.insert("redelivered".into(), r.into());
    }
    info.extend(env.delivery_info.extra.clone());
    props.insert("delivery_info".into(), Value::Map(info));
    props.insert("priority".into(), Value::Int(env.message.priority.into()));
    props.insert("body_encoding".into(), "base64".into());
    props.insert("delivery_tag".into(), env.delivery_tag.clone().into());
    props
}

#[test]
fn every_message_fixture_decodes_as_python_decoded_it() {
    let fixtures = load("messages");
    assert!(fixtures.len() >= 40, "expected at least 40 message fixtures, found {}", fixtures.len());
    let mut byte_identical = 0;
    for (name, fx) in &fixtures {
        let raw = str_field(fx, "envelope");
        let decoded = fx.get("decoded").and_then(Value::as_map).unwrap_or_else(|| panic!("{name}: no decoded"));
        let env = Envelope::from_slice(raw.as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}"));

        // The envelope itself re-encodes byte for byte.
        assert_eq!(env.to_json().unwrap(), raw, "{name}: envelope bytes differ");

        // What kombu handed to Python is what celeriac sees.
        assert_eq!(Some(&Value::Map(env.message.headers.clone())), decoded.get("headers"), "{name}: headers");
        assert_eq!(
            Some(env.message.content_type.as_str()),
            decoded.get("content_type").and_then(Value::as_str),
            "{name}"
        );
        if let Some(Value::Map(props)) = decoded.get("properties") {
            let ours = full_properties(&env);
            for (key, value) in props {
                assert_eq!(ours.get(key), Some(value), "{name}: property {key}");
            }
        }

        let result = TaskMessage::from_message(&env.message);
        if fx.get("serializer").and_then(Value::as_str) == Some("pickle") {
            let err = result.expect_err("pickle must be refused");
            assert_eq!(err, ProtocolError::Codec(CodecError::PickleRefused), "{name}");
            continue;
        }
        let task = result.unwrap_or_else(|e| panic!("{name}: {e}"));
        let want_protocol = fx.get("protocol").and_then(Value::as_i64);
        match task.protocol {
            Protocol::V2 => assert_eq!(want_protocol, Some(2), "{name}"),
            Protocol::V1 | Protocol::Hybrid => assert_eq!(want_protocol, Some(1), "{name}"),
        }
        assert_eq!(Some(&task.body_value()), decoded.get("payload"), "{name}: payload");

        // Re-encode with the original content type and compression.
        let content_type = env.message.content_type().unwrap();
        let compression = env.message.compression().unwrap();
        let message = task
            .to_message(env.message.properties.clone(), env.message.priority, content_type, compression)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let again = Envelope { message, ..env.clone() };
        let text = again.to_json().unwrap();
        if compression.is_none() && content_type == ContentType::Json {
            assert_eq!(text, raw, "{name}: re-encoded bytes differ");
            byte_identical += 1;
        }
        let back = Envelope::from_slice(text.as_bytes()).unwrap();
        assert_eq!(TaskMessage::from_message(&back.message).unwrap(), task, "{name}: second trip");
    }
    assert!(byte_identical >= 30, "only {byte_identical} fixtures were checked byte for byte");
}

/// A worker's view of the fixtures: with Celery's default `accept_content`
/// (JSON only) every JSON fixture decodes to the same task as without limits,
/// and every other one is refused by content type before anything else; with
/// json, msgpack and yaml accepted, all but pickle decode.
#[test]
fn every_fixture_decodes_within_the_default_limits() {
    use celeriac_protocol::limits::{Accept, DecodeLimits, ErrorKind};
    let default = DecodeLimits::default();
    let all = DecodeLimits { accept: Accept::from_names(["json", "msgpack", "yaml"]).unwrap(), ..default.clone() };
    let (mut json_count, mut refused) = (0, 0);
    for (name, fx) in &load("messages") {
        let raw = str_field(fx, "envelope");
        let env = Envelope::from_slice_with(raw.as_bytes(), &default).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(env, Envelope::from_slice(raw.as_bytes()).unwrap(), "{name}");
        let pickle = fx.get("serializer").and_then(Value::as_str) == Some("pickle");
        if env.message.content_type == "application/json" {
            json_count += 1;
            let want = TaskMessage::from_message(&env.message).unwrap();
            assert_eq!(TaskMessage::from_message_with(&env.message, &default).unwrap(), want, "{name}");
        } else {
            refused += 1;
            let err = TaskMessage::from_message_with(&env.message, &default).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::ContentDisallowed, "{name}: {err}");
            match TaskMessage::from_message_with(&env.message, &all) {
                Ok(task) => assert_eq!(task, TaskMessage::from_message(&env.message).unwrap(), "{name}"),
                Err(e) => assert!(pickle && e.kind() == ErrorKind::ContentDisallowed, "{name}: {e}"),
            }
        }
    }
    assert!(json_count >= 40 && refused >= 4, "{json_count} JSON fixtures, {refused} others");
}
