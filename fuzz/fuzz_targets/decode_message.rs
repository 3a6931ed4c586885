//! Feeds arbitrary bytes to every decoder a broker message passes through: the
//! Redis envelope, the `unacked` record, the task message (v1/v2, every codec,
//! every compression) and the result record. A decoder may refuse the input; it
//! must never panic, and what it accepts must re-encode and decode to the same.
#![no_main]

use celeriac_protocol::codec::{self, ContentType};
use celeriac_protocol::envelope::Envelope;
use celeriac_protocol::{json, msgpack, TaskMessage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
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
    }
    let _ = Envelope::from_unacked_slice(data);
    if let Ok(v) = json::from_slice(data) {
        let text = json::to_string(&v).expect("a decoded value must encode");
        assert_eq!(json::from_str(&text).expect("re-encoded JSON must decode"), v);
        let _ = celeriac_protocol::result::ResultMeta::from_value(&v);
    }
    if let Ok(v) = msgpack::from_slice(data) {
        let bytes = msgpack::to_vec(&v).expect("a decoded msgpack value must encode");
        assert_eq!(msgpack::from_slice(&bytes).expect("re-encoded msgpack must decode"), v);
    }
    let _ = codec::decode(ContentType::Yaml, data);
});
