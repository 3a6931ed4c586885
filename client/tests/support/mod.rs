//! Test support: a byte-exact `MONITOR` reader on a private redis-server, the
//! canvas fixtures, and the normalisation that numbers random ids.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed assertion

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use celeriac_protocol::envelope::Envelope;
use celeriac_protocol::{json, Value};

/// One command the server ran: its arguments, exactly.
pub type Command = Vec<Vec<u8>>;

/// Records every command the server executes (`MONITOR`).
pub struct Monitor {
    entries: Arc<Mutex<Vec<Command>>>,
    sync: TcpStream,
}

impl Monitor {
    /// Starts monitoring the server on `port`.
    pub fn start(port: u16) -> Monitor {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.write_all(b"MONITOR\r\n").unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut first = String::new();
        reader.read_line(&mut first).unwrap();
        assert!(first.starts_with("+OK"), "MONITOR refused: {first}");
        let entries = Arc::new(Mutex::new(Vec::new()));
        let sink = entries.clone();
        std::thread::spawn(move || {
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        if let Some(args) = parse_monitor_line(&line) {
                            sink.lock().unwrap().push(args);
                        }
                    }
                }
            }
        });
        let sync = TcpStream::connect(("127.0.0.1", port)).unwrap();
        Monitor { entries, sync }
    }

    /// Waits until every command sent before now has been seen, then returns
    /// and forgets them.
    pub fn drain(&mut self) -> Vec<Command> {
        let token = format!("celeriac-monitor-sync-{}", uuid::Uuid::new_v4());
        let cmd = format!("*2\r\n$4\r\nECHO\r\n${}\r\n{token}\r\n", token.len());
        self.sync.write_all(cmd.as_bytes()).unwrap();
        let mut buf = [0u8; 256];
        let _ = std::io::Read::read(&mut self.sync, &mut buf).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            {
                let mut entries = self.entries.lock().unwrap();
                if let Some(at) = entries.iter().position(|a| a.len() == 2 && a[1] == token.as_bytes()) {
                    let out: Vec<Command> = entries.drain(..=at).collect();
                    return out[..out.len() - 1].to_vec();
                }
            }
            assert!(Instant::now() < deadline, "MONITOR sync timed out");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// One `MONITOR` line as its arguments, undoing redis' escaping.
fn parse_monitor_line(line: &[u8]) -> Option<Command> {
    let line = line.strip_suffix(b"\r\n").unwrap_or(line);
    if !line.starts_with(b"+") {
        return None;
    }
    let close = line.windows(2).position(|w| w == b"] ")?;
    let mut i = close + 2;
    let mut args = Vec::new();
    while i < line.len() {
        if line[i] != b'"' {
            return None;
        }
        i += 1;
        let mut out = Vec::new();
        loop {
            let c = *line.get(i)?;
            match c {
                b'\\' => {
                    let e = *line.get(i + 1)?;
                    if e == b'x' {
                        let hex = std::str::from_utf8(line.get(i + 2..i + 4)?).ok()?;
                        out.push(u8::from_str_radix(hex, 16).ok()?);
                        i += 4;
                    } else {
                        out.push(match e {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'a' => 7,
                            b'b' => 8,
                            other => other,
                        });
                        i += 2;
                    }
                }
                b'"' => {
                    i += 1;
                    break;
                }
                other => {
                    out.push(other);
                    i += 1;
                }
            }
        }
        args.push(out);
        if line.get(i) == Some(&b' ') {
            i += 1;
        }
    }
    Some(args)
}

/// What a canvas fixture (or a run of ours) did, as comparable lines: each
/// push with its envelope (the body decoded in place), each chord-key write.
pub fn ops_from_commands(commands: &[Command]) -> Vec<String> {
    let mut out = Vec::new();
    for args in commands {
        let Some(cmd) = args.first() else { continue };
        let cmd = String::from_utf8_lossy(cmd).to_uppercase();
        if cmd == "LPUSH" || cmd == "RPUSH" {
            for value in &args[2..] {
                out.push(push_line(&cmd, &String::from_utf8_lossy(&args[1]), &String::from_utf8_lossy(value)));
            }
        } else if args.len() > 1 && args[1].starts_with(b"celery-taskset-meta-") {
            let rest: Vec<String> = args[1..].iter().map(|a| String::from_utf8_lossy(a).into_owned()).collect();
            out.push(format!("{cmd} {}", rest.join(" ")));
        }
    }
    out
}

/// The fixture's operations as comparable lines.
pub fn ops_from_fixture(fixture: &Value) -> Vec<String> {
    let ops = fixture.as_map().and_then(|m| m.get("ops")).and_then(Value::as_list).unwrap();
    ops.iter()
        .map(|op| {
            let op = op.as_map().unwrap();
            let cmd = op.get("op").and_then(Value::as_str).unwrap();
            match op.get("envelope").and_then(Value::as_str) {
                Some(envelope) => push_line(cmd, op.get("key").and_then(Value::as_str).unwrap(), envelope),
                None => {
                    let args: Vec<&str> =
                        op.get("args").and_then(Value::as_list).unwrap().iter().filter_map(Value::as_str).collect();
                    format!("{cmd} {}", args.join(" "))
                }
            }
        })
        .collect()
}

/// `CMD key envelope`, the envelope's base64 body replaced by its text, and
/// the values that depend on the sender (origin) or the clock (expiration)
/// replaced by placeholders.
fn push_line(cmd: &str, key: &str, envelope: &str) -> String {
    let parsed = json::from_str(envelope).unwrap();
    let map = parsed.as_map().unwrap();
    let b64 = map.get("body").and_then(Value::as_str).unwrap();
    let decoded = Envelope::from_slice(envelope.as_bytes()).unwrap();
    let body = String::from_utf8(decoded.message.body.clone()).unwrap();
    let mut text = envelope.replacen(&format!("\"body\": \"{b64}\""), &format!("\"body\": {body}"), 1);
    if let Some(origin) =
        map.get("headers").and_then(|h| h.as_map()).and_then(|h| h.get("origin")).and_then(Value::as_str)
    {
        text = text.replace(&format!("\"origin\": \"{origin}\""), "\"origin\": \"<origin>\"");
    }
    if let Some(exp) =
        map.get("properties").and_then(|p| p.as_map()).and_then(|p| p.get("expiration")).and_then(Value::as_str)
    {
        text = text.replace(&format!("\"expiration\": \"{exp}\""), "\"expiration\": \"<expiration>\"");
    }
    format!("{cmd} {key:?} {text}")
}

/// Replaces every uuid that is not pinned (does not start with `pinned`) by
/// `<id-N>`, numbered by first appearance across `texts`, so that two runs
/// compare equal when their random ids stand in the same places.
pub struct IdNumbering {
    pinned: String,
    seen: HashMap<String, usize>,
}

impl IdNumbering {
    /// Ids starting with `pinned` are kept as they are.
    pub fn new(pinned: &str) -> IdNumbering {
        IdNumbering { pinned: pinned.to_owned(), seen: HashMap::new() }
    }

    /// `text` with its random ids numbered.
    pub fn apply(&mut self, text: &str) -> String {
        let bytes = text.as_bytes();
        let mut out = String::with_capacity(text.len());
        let mut i = 0;
        while i < bytes.len() {
            if i + 36 <= bytes.len() && is_uuid(&bytes[i..i + 36]) {
                let id = &text[i..i + 36];
                if id.starts_with(&self.pinned) {
                    out.push_str(id);
                } else {
                    let n = self.seen.len();
                    let n = *self.seen.entry(id.to_owned()).or_insert(n);
                    out.push_str(&format!("<id-{n}>"));
                }
                i += 36;
            } else {
                let ch = text[i..].chars().next().unwrap();
                out.push(ch);
                i += ch.len_utf8();
            }
        }
        out
    }
}

fn is_uuid(b: &[u8]) -> bool {
    b.iter().enumerate().all(|(i, c)| match i {
        8 | 13 | 18 | 23 => *c == b'-',
        _ => c.is_ascii_hexdigit() && !c.is_ascii_uppercase(),
    })
}

/// Every `tests/fixtures/canvas/*.json`, by name.
pub fn canvas_fixtures() -> HashMap<String, Value> {
    celeriac_tests::fixture_files("canvas")
        .unwrap()
        .into_iter()
        .map(|(name, text)| (name, json::from_str(&text).unwrap()))
        .collect()
}
