//! Property tests: whatever celeriac encodes, it decodes to the same value, and
//! no input makes a decoder panic.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed assertion

use celeriac_protocol::codec::{self, Compression, ContentType};
use celeriac_protocol::envelope::Envelope;
use celeriac_protocol::task::{Protocol, Seconds, TaskMessage, TimeLimits};
use celeriac_protocol::time::{PyDate, PyDateTime, PyTime};
use celeriac_protocol::{json, msgpack, BigInt, Decimal, Map, Signature, Value};
use jiff::civil;
use jiff::tz::Offset;
use proptest::prelude::*;

fn civil_datetime() -> impl Strategy<Value = civil::DateTime> {
    (1i16..=9999, 1i8..=12, 1i8..=28, 0i8..24, 0i8..60, 0i8..60, 0i32..1_000_000)
        .prop_map(|(y, mo, d, h, mi, s, us)| civil::date(y, mo, d).at(h, mi, s, us * 1000))
}

fn offset() -> impl Strategy<Value = Option<Offset>> {
    prop::option::of((-23 * 60i32..=23 * 60).prop_map(|m| Offset::from_seconds(m * 60).unwrap()))
}

/// Values made only of what JSON, msgpack and YAML can all carry.
fn plain_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Int),
        any::<f64>().prop_map(Value::Float),
        ".*".prop_map(Value::Str),
        prop::collection::vec(any::<u8>(), 0..16).prop_map(Value::Bytes),
        (i64::MAX as u64 + 1..=u64::MAX).prop_map(Value::from),
    ]
}

/// Every kind of value kombu's JSON carries.
fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => plain_leaf(),
        1 => any::<i128>().prop_map(|i| Value::BigInt(BigInt::from_i128(i))),
        1 => "-?[1-9][0-9]{20,60}".prop_map(|s| Value::BigInt(BigInt::parse(&s).unwrap())),
        1 => (civil_datetime(), offset()).prop_map(|(civil, offset)| Value::DateTime(PyDateTime { civil, offset })),
        1 => civil_datetime().prop_map(|dt| Value::Date(PyDate(dt.date()))),
        1 => (civil_datetime(), offset()).prop_map(|(dt, offset)| Value::Time(PyTime { civil: dt.time(), offset })),
        1 => any::<u128>().prop_map(|u| Value::Uuid(uuid::Uuid::from_u128(u))),
        1 => "-?[0-9]{1,20}(\\.[0-9]{1,10})?(E[+-][0-9]{1,3})?".prop_map(|s| Value::Decimal(Decimal::parse(&s).unwrap())),
    ]
}

fn tree(leaf: impl Strategy<Value = Value> + 'static) -> impl Strategy<Value = Value> {
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::List),
            prop::collection::vec((".{0,12}", inner), 0..8).prop_map(|pairs| {
                let map: Map = pairs.into_iter().collect();
                // kombu reads a dict of exactly these two keys as a type marker, in
                // Python too: such a dict cannot cross the wire as a dict.
                if map.len() == 2 && map.contains_key("__type__") && map.contains_key("__value__") {
                    Value::Null
                } else {
                    Value::Map(map)
                }
            }),
        ]
    })
}

fn signature() -> impl Strategy<Value = Signature> {
    ("[a-z.]{1,20}", prop::collection::vec(tree(plain_leaf()), 0..3), any::<bool>(), prop::option::of("[a-z]{1,8}"))
        .prop_map(|(task, args, immutable, subtask_type)| Signature {
            task,
            args,
            immutable,
            subtask_type,
            options: [("task_id".to_owned(), Value::Str("tid".into()))].into_iter().collect(),
            ..Signature::default()
        })
}

fn task_message() -> impl Strategy<Value = TaskMessage> {
    (
        "[a-z_.]{1,30}",
        "[0-9a-f-]{1,36}",
        prop::collection::vec(tree(json_leaf()), 0..4),
        prop::collection::vec(("[a-z_]{1,10}", tree(json_leaf())), 0..4),
        prop::option::of((civil_datetime(), offset())),
        (0i64..10, prop::option::of(0i64..1000), prop::option::of(0.0f64..100.0)),
        prop::option::of(prop::collection::vec(signature(), 0..3)),
        prop::option::of(signature()),
        prop::collection::vec(("x-[a-z]{1,8}", tree(plain_leaf())), 0..3),
    )
        .prop_map(|(name, id, args, kwargs, eta, (retries, hard, soft), callbacks, chord, custom)| {
            let mut t = TaskMessage::new(name, id);
            t.args = args;
            t.kwargs = kwargs.into_iter().collect();
            t.headers.eta = eta.map(|(civil, offset)| PyDateTime { civil, offset });
            t.headers.retries = retries;
            t.headers.timelimit = TimeLimits { hard: hard.map(Seconds::Int), soft: soft.map(Seconds::Float) };
            t.headers.extra = custom.into_iter().collect();
            t.embed.callbacks = callbacks;
            t.embed.chord = chord;
            t
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn json_round_trips_every_value(v in tree(json_leaf())) {
        let text = json::to_string(&v).unwrap();
        prop_assert!(text.is_ascii(), "kombu JSON is ASCII-only");
        let back = json::from_str(&text).unwrap();
        prop_assert_eq!(&back, &v);
        // Writing is deterministic, so a second trip gives the same bytes.
        prop_assert_eq!(json::to_string(&back).unwrap(), text);
    }

    #[test]
    fn msgpack_round_trips_plain_values(v in tree(plain_leaf())) {
        let bytes = msgpack::to_vec(&v).unwrap();
        prop_assert_eq!(msgpack::from_slice(&bytes).unwrap(), v);
    }

    #[test]
    fn task_messages_round_trip_through_the_envelope(
        task in task_message(),
        ct in prop_oneof![Just(ContentType::Json), Just(ContentType::Yaml)],
        compression in prop::option::of(prop_oneof![Just(Compression::Zlib), Just(Compression::Zstd), Just(Compression::Brotli)]),
        priority in 0u8..=9,
    ) {
        // YAML (PyYAML's SafeDumper) cannot carry UUID, Decimal or time values.
        let encodable = codec::encode(ct, &task.body_value()).is_ok();
        prop_assume!(encodable);
        let props = task.default_properties(Some("reply"), Some(60_000));
        let message = task.to_message(props, priority, ct, compression).unwrap();
        let envelope = Envelope::new(message, "", "celery");
        let text = envelope.to_json().unwrap();
        let back = Envelope::from_slice(text.as_bytes()).unwrap();
        prop_assert_eq!(&back, &envelope);
        prop_assert_eq!(back.to_json().unwrap(), text);
        let decoded = TaskMessage::from_message(&back.message).unwrap();
        prop_assert_eq!(decoded.protocol, Protocol::V2);
        prop_assert_eq!(decoded, task);
    }

    #[test]
    fn decoders_never_panic_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = json::from_slice(&bytes);
        let _ = msgpack::from_slice(&bytes);
        let _ = codec::decode(ContentType::Yaml, &bytes);
        let _ = Envelope::from_slice(&bytes);
        let _ = Envelope::from_unacked_slice(&bytes);
        for c in [Compression::Zlib, Compression::Bzip2, Compression::Lzma, Compression::Zstd, Compression::Brotli] {
            let _ = c.decompress(&bytes, 1 << 16);
        }
    }

    #[test]
    fn decoders_never_panic_on_json_like_text(text in "[\\[\\]{}\",:0-9a-zA-Z_\\\\. eE+-]{0,64}") {
        let _ = json::from_str(&text);
        if let Ok(env) = Envelope::from_slice(text.as_bytes()) {
            let _ = TaskMessage::from_message(&env.message);
        }
    }
}
