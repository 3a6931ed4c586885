//! Feeds arbitrary bytes to the pure steps of a remote-control request: the
//! bounded body decoding, kombu's addressing (destination, pattern with the
//! glob matcher), the envelope and the typed command with its checked
//! arguments, and the glob matcher alone. Each may refuse the input; none
//! may panic, hang or take more than linear time in the pattern.
#![no_main]

use celeriac_protocol::codec::ContentType;
use celeriac_protocol::Value;
use celeriac_worker::control::command::{rate, Command};
use celeriac_worker::control::glob::{glob_match, Glob};
use celeriac_worker::control::request::{addressed_to, decode_bytes, Request};
use libfuzzer_sys::fuzz_target;

/// A node name like the ones workers have.
const NODE: &str = "celeriac@host-1";

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    match selector % 4 {
        // The glob matcher: a pattern, then (after a NUL) a name of node-name size.
        0 => {
            let text = String::from_utf8_lossy(rest);
            let (pattern, name) = text.split_once('\0').unwrap_or((&text, NODE));
            let name: String = name.chars().take(256).collect();
            let glob = Glob::new(pattern);
            let once = glob.matches(&name);
            assert_eq!(once, glob_match(pattern, &name), "compiling twice changed the answer");
            // A pattern matches itself when it has no special characters.
            if !pattern.contains(['*', '?', '[']) && pattern.chars().count() <= 256 {
                assert!(glob_match(pattern, pattern), "{pattern:?}");
            }
        }
        // A rate limit string.
        1 => {
            let text = String::from_utf8_lossy(rest).into_owned();
            if let Ok(celeriac_worker::control::command::Rate::PerSecond(r)) = rate(&Value::Str(text)) {
                assert!(r.is_finite() && r > 0.0, "{r}");
            }
        }
        // A whole request body, as JSON (or msgpack) bytes.
        _ => {
            let content_type = if selector % 4 == 2 { ContentType::Json } else { ContentType::Msgpack };
            let Ok(body) = decode_bytes(content_type, rest) else { return };
            let _ = addressed_to(&body, NODE);
            let Ok(request) = Request::parse(&body) else { return };
            let _ = request.label();
            match Command::parse(&request.method, request.arguments.as_ref()) {
                Ok(command) => {
                    let _ = command.name();
                    let _ = format!("{command:?}");
                }
                Err(e) => {
                    let text = e.reply_text();
                    assert!(!text.is_empty());
                    let _ = e.to_string();
                    let _ = e.reply();
                }
            }
        }
    }
});
