//! A message body as a broker delivers it: any content type, any compression
//! header, any bytes, decoded with small limits chosen by the input. Decoding
//! must never panic, never return more than the limits allow, and refuse in the
//! documented order (content type, then raw size, then decompression). Every
//! compression must also round-trip what fits and refuse what does not.
#![no_main]

use celeriac_protocol::codec::{CodecError, Compression};
use celeriac_protocol::limits::{Accept, DecodeLimits, ErrorKind};
use celeriac_protocol::{Map, Message, Value};
use libfuzzer_sys::fuzz_target;

const CONTENT_TYPES: [&str; 9] = [
    "application/json",
    "application/x-msgpack",
    "application/x-yaml",
    "application/x-python-serialize",
    "application/data",
    "text/plain",
    "",
    "json",
    "application/x-unknown",
];

const COMPRESSIONS: [Option<Compression>; 6] = [
    None,
    Some(Compression::Zlib),
    Some(Compression::Bzip2),
    Some(Compression::Lzma),
    Some(Compression::Zstd),
    Some(Compression::Brotli),
];

fn shape(v: &Value) -> (usize, usize) {
    match v {
        Value::List(items) => items.iter().map(shape).fold((1, 1), |(d, n), (cd, cn)| (d.max(cd + 1), n + cn)),
        Value::Map(map) => map.values().map(shape).fold((1, 1), |(d, n), (cd, cn)| (d.max(cd + 1), n + cn + 1)),
        _ => (0, 1),
    }
}

fuzz_target!(|data: &[u8]| {
    let [a, b, c, d, body @ ..] = data else { return };
    let content_type = CONTENT_TYPES[usize::from(*a) % CONTENT_TYPES.len()];
    let compression = COMPRESSIONS[usize::from(*b) % COMPRESSIONS.len()];
    let accept = match c % 3 {
        0 => Accept::any(),
        1 => Accept::json(),
        _ => Accept::from_names(["json", "msgpack", "yaml"]).expect("known serializers"),
    };
    let limits = DecodeLimits {
        accept,
        max_body_bytes: usize::from(*d) * 64,
        max_decoded_bytes: usize::from(*d) * 256,
        max_depth: usize::from(c / 3 % 40),
        max_elements: usize::from(*d) * 8,
    };

    // Arbitrary bytes under an arbitrary header, then a real compression of them.
    let mut headers = Map::new();
    if let Some(method) = compression {
        headers.insert("compression".into(), Value::Str(method.mime().into()));
    }
    let mut message = Message {
        headers,
        properties: Map::new(),
        priority: 0,
        content_type: content_type.into(),
        content_encoding: "utf-8".into(),
        body: body.to_vec(),
    };
    for round in 0..2 {
        match message.decode_body_with(&limits) {
            Ok(value) => {
                assert!(limits.accept.allows(content_type), "decoded a type not accepted");
                assert!(message.body.len() <= limits.max_body_bytes, "decoded a body past the raw limit");
                let (depth, count) = shape(&value);
                assert!(depth <= limits.depth(), "depth {depth} past {}", limits.depth());
                if !matches!(value, Value::Bytes(_) | Value::Str(_)) {
                    assert!(count <= limits.max_elements, "{count} values past {}", limits.max_elements);
                }
            }
            Err(e) => {
                let kind = e.kind();
                if !limits.accept.allows(content_type) {
                    assert_eq!(kind, ErrorKind::ContentDisallowed, "the content type is checked first: {e}");
                } else if message.body.len() > limits.max_body_bytes && kind != ErrorKind::ContentDisallowed {
                    assert!(
                        matches!(kind, ErrorKind::BodyTooLarge | ErrorKind::UnknownContentType),
                        "the raw size is checked before decompression: {e}"
                    );
                }
            }
        }
        if round == 0 {
            match compression.map(|m| m.compress(body)) {
                Some(Ok(packed)) => message.body = packed,
                _ => break,
            }
        }
    }

    // Every method round-trips what fits in the limit and refuses the rest.
    if let Some(method) = compression {
        let packed = method.compress(body).expect("compression of bytes cannot fail");
        let limit = limits.max_decoded_bytes;
        match method.decompress(&packed, limit) {
            Ok(out) => assert_eq!(out, body, "{method} round trip"),
            Err(CodecError::TooLarge { limit: l }) => assert!(body.len() > l, "{method}: refused {} <= {l}", body.len()),
            Err(e) => panic!("{method} failed on its own output: {e}"),
        }
    }
});
