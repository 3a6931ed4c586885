//! `celeriac inspect <command>` and `celeriac control <command>`: Celery's
//! command names and positional arguments (`celery inspect query_task ID...`,
//! `celery control rate_limit TASK RATE`), sent through the pidbox
//! ([`super::pidbox`]) to every worker or `-d` nodes. `--json` prints what
//! `celery inspect --json` prints (`{node: reply}`) and what `celery control
//! --json` prints (a list of `{node: reply}`); no reply at all exits 69.

use std::time::Duration;

use celeriac_protocol::{Map, Value};
use clap::Args;
use serde_json::json;

use super::pidbox::{Call, Mailbox};
use super::{print_json, to_json, Fleet};
use crate::error::CliError;

/// How a positional argument is read.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Str,
    Int,
    Float,
    /// Python's `strtobool`: y, yes, t, true, on, 1 / n, no, f, false, off, 0.
    Bool,
}

/// A command of Celery's remote-control panel: its positional arguments in
/// order and the name that takes the rest of them.
#[derive(Debug, Clone, Copy)]
struct Panel {
    name: &'static str,
    args: &'static [(&'static str, Kind)],
    variadic: Option<&'static str>,
    signature: &'static str,
}

const fn cmd(name: &'static str) -> Panel {
    Panel { name, args: &[], variadic: None, signature: "" }
}

/// `celery inspect` commands (Celery 5.7's visible ones).
const INSPECT: &[Panel] = &[
    cmd("active"),
    cmd("active_queues"),
    cmd("clock"),
    Panel {
        name: "conf",
        args: &[("with_defaults", Kind::Bool)],
        variadic: None,
        signature: "[include_defaults=False]",
    },
    cmd("ping"),
    Panel { name: "query_task", args: &[], variadic: Some("ids"), signature: "[id1 [id2 [... [idN]]]]" },
    Panel {
        name: "registered",
        args: &[],
        variadic: Some("taskinfoitems"),
        signature: "[attr1 [attr2 [... [attrN]]]]",
    },
    cmd("report"),
    cmd("reserved"),
    cmd("revoked"),
    cmd("scheduled"),
    cmd("stats"),
];

/// `celery control` commands (Celery 5.7's).
const CONTROL: &[Panel] = &[
    Panel {
        name: "add_consumer",
        args: &[
            ("queue", Kind::Str),
            ("exchange", Kind::Str),
            ("exchange_type", Kind::Str),
            ("routing_key", Kind::Str),
        ],
        variadic: None,
        signature: "<queue> [exchange [type [routing_key]]]",
    },
    Panel {
        name: "autoscale",
        args: &[("max", Kind::Int), ("min", Kind::Int)],
        variadic: None,
        signature: "[max [min]]",
    },
    Panel { name: "cancel_consumer", args: &[("queue", Kind::Str)], variadic: None, signature: "<queue>" },
    cmd("disable_events"),
    cmd("election"),
    cmd("enable_events"),
    cmd("heartbeat"),
    Panel { name: "pool_grow", args: &[("n", Kind::Int)], variadic: None, signature: "[N=1]" },
    cmd("pool_restart"),
    Panel { name: "pool_shrink", args: &[("n", Kind::Int)], variadic: None, signature: "[N=1]" },
    Panel {
        name: "rate_limit",
        args: &[("task_name", Kind::Str), ("rate_limit", Kind::Str)],
        variadic: None,
        signature: "<task_name> <rate_limit (e.g., 5/s | 5/m | 5/h)>",
    },
    Panel { name: "revoke", args: &[], variadic: Some("task_id"), signature: "[id1 [id2 [... [idN]]]]" },
    cmd("shutdown"),
    Panel {
        name: "terminate",
        args: &[("signal", Kind::Str)],
        variadic: Some("task_id"),
        signature: "<signal> [id1 [id2 [... [idN]]]]",
    },
    Panel {
        name: "time_limit",
        args: &[("task_name", Kind::Str), ("soft", Kind::Float), ("hard", Kind::Float)],
        variadic: None,
        signature: "<task_name> <soft_secs> [hard_secs]",
    },
];

/// `celeriac inspect` / `celeriac control` flags.
#[derive(Args, Debug, Clone)]
pub struct RemoteArgs {
    /// The command (Celery's name: `ping`, `stats`, `active`, `revoke`, ...);
    /// `--list` shows them all.
    #[arg(required_unless_present = "list")]
    pub command: Option<String>,
    /// The command's arguments, as `celery inspect`/`celery control` take them.
    pub arguments: Vec<String>,
    /// Seconds to wait for replies (Celery's default: 1).
    #[arg(short = 't', long, default_value = "1.0", value_parser = |v: &str| super::seconds("--timeout", v))]
    pub timeout: Duration,
    /// Only these nodes, comma separated (`-d w1@host,w2@host`).
    #[arg(short = 'd', long, value_delimiter = ',', action = clap::ArgAction::Set)]
    pub destination: Vec<String>,
    /// List the commands with their arguments and exit.
    #[arg(long)]
    pub list: bool,
    /// Broker, settings and output.
    #[command(flatten)]
    pub fleet: Fleet,
}

fn strtobool(text: &str) -> Option<bool> {
    match text.to_ascii_lowercase().as_str() {
        "y" | "yes" | "t" | "true" | "on" | "1" => Some(true),
        "n" | "no" | "f" | "false" | "off" | "0" => Some(false),
        _ => None,
    }
}

/// The `arguments` of a request, from the command line as Celery reads it
/// (`_compile_arguments`): the named positionals converted, the rest to the
/// variadic name.
fn compile(panel: &Panel, words: &[String]) -> Result<Map, CliError> {
    let usage = || {
        CliError::Setting(format!(
            "command {:?} takes arguments: {}",
            panel.name,
            if panel.signature.is_empty() { "none" } else { panel.signature }
        ))
    };
    let mut arguments = Map::new();
    let mut rest = words;
    for (name, kind) in panel.args {
        let Some((word, tail)) = rest.split_first() else { break };
        let value = match kind {
            Kind::Str => Value::Str(word.clone()),
            Kind::Int => Value::Int(word.parse().map_err(|_| {
                CliError::Setting(format!("{}: {name} must be a whole number, not {word:?}", panel.name))
            })?),
            Kind::Float => {
                let f: f64 = word.parse().map_err(|_| {
                    CliError::Setting(format!("{}: {name} must be a number of seconds, not {word:?}", panel.name))
                })?;
                if !f.is_finite() {
                    return Err(CliError::Setting(format!("{}: {name} must be a finite number", panel.name)));
                }
                Value::Float(f)
            }
            Kind::Bool => Value::Bool(strtobool(word).ok_or_else(|| {
                CliError::Setting(format!("{}: {name} must be true or false, not {word:?}", panel.name))
            })?),
        };
        arguments.insert((*name).to_owned(), value);
        rest = tail;
    }
    match panel.variadic {
        Some(name) => {
            arguments.insert(name.to_owned(), Value::List(rest.iter().cloned().map(Value::Str).collect()));
        }
        None if !rest.is_empty() => return Err(usage()),
        None => {}
    }
    Ok(arguments)
}

fn find(table: &'static [Panel], kind: &str, name: &str) -> Result<&'static Panel, CliError> {
    table.iter().find(|p| p.name == name).ok_or_else(|| {
        let names: Vec<&str> = table.iter().map(|p| p.name).collect();
        CliError::Setting(format!("Command {name} not recognized. Available {kind} commands: {}", names.join(", ")))
    })
}

fn listing(table: &[Panel]) -> String {
    table.iter().map(|p| format!("  {} {}\n", p.name, p.signature)).collect()
}

/// A reply as Celery's command line shows it: `OK` and the value, or
/// `ERROR` and the message.
fn pretty(value: &Value) -> (bool, String) {
    match value {
        Value::Map(m) if m.len() == 1 && m.contains_key("ok") => (
            true,
            m.get("ok")
                .map(|v| v.as_str().map(str::to_owned).unwrap_or_else(|| to_json(v).to_string()))
                .unwrap_or_default(),
        ),
        Value::Map(m) if m.len() == 1 && m.contains_key("error") => {
            (false, m.get("error").map(|v| to_json(v).to_string()).unwrap_or_default())
        }
        Value::List(items) if items.is_empty() => (true, "- empty -".into()),
        Value::List(items) => (true, items.iter().map(|i| format!("* {}", one_line(i))).collect::<Vec<_>>().join("\n")),
        other => (true, serde_json::to_string_pretty(&to_json(other)).unwrap_or_default()),
    }
}

fn one_line(value: &Value) -> String {
    match value {
        Value::Str(s) => s.clone(),
        other => to_json(other).to_string(),
    }
}

fn say(replies: &[(String, Value)]) {
    for (node, value) in replies {
        let (ok, text) = pretty(value);
        println!("->  {node}: {}", if ok { "OK" } else { "ERROR" });
        for line in text.lines() {
            println!("        {line}");
        }
    }
    let n = replies.len();
    println!("\n{n} {} online.", if n == 1 { "node" } else { "nodes" });
}

/// Runs `celeriac inspect` (`control = false`) or `celeriac control`.
pub async fn run(args: RemoteArgs, control: bool) -> Result<(), CliError> {
    let (table, kind) = if control { (CONTROL, "control") } else { (INSPECT, "inspect") };
    if args.list {
        print!("{}", listing(table));
        return Ok(());
    }
    let name = args.command.as_deref().unwrap_or_default();
    let panel = find(table, kind, name)?;
    let arguments = compile(panel, &args.arguments)?;
    let settings = args.fleet.settings()?;
    let broker = crate::assemble::broker(&settings)?;
    let mailbox = Mailbox::new(&broker)?;
    let call = Call::new(panel.name, arguments, args.timeout).to(&args.destination);
    let replies = mailbox.call(&call).await?;
    if replies.is_empty() {
        return Err(CliError::NoReplies);
    }
    if args.fleet.json {
        if control {
            let list: Vec<serde_json::Value> = replies.iter().map(|(n, v)| json!({ n.clone(): to_json(v) })).collect();
            print_json(&serde_json::Value::Array(list));
        } else {
            let map: serde_json::Map<String, serde_json::Value> =
                replies.iter().map(|(n, v)| (n.clone(), to_json(v))).collect();
            print_json(&serde_json::Value::Object(map));
        }
    } else {
        say(&replies);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_owned).collect()
    }

    fn compiled(table: &'static [Panel], name: &str, line: &str) -> Result<serde_json::Value, CliError> {
        let panel = find(table, "x", name)?;
        Ok(to_json(&Value::Map(compile(panel, &words(line))?)))
    }

    #[test]
    fn arguments_are_read_as_celery_reads_them() {
        assert_eq!(
            compiled(CONTROL, "rate_limit", "tasks.add 10/m").unwrap(),
            serde_json::json!({"task_name":"tasks.add","rate_limit":"10/m"})
        );
        assert_eq!(
            compiled(CONTROL, "time_limit", "tasks.add 10 20").unwrap(),
            serde_json::json!({"task_name":"tasks.add","soft":10.0,"hard":20.0})
        );
        assert_eq!(compiled(CONTROL, "revoke", "a b").unwrap(), serde_json::json!({"task_id":["a","b"]}));
        assert_eq!(
            compiled(CONTROL, "terminate", "SIGKILL a").unwrap(),
            serde_json::json!({"signal":"SIGKILL","task_id":["a"]})
        );
        assert_eq!(compiled(CONTROL, "pool_grow", "").unwrap(), serde_json::json!({}));
        assert_eq!(compiled(INSPECT, "registered", "").unwrap(), serde_json::json!({"taskinfoitems":[]}));
        assert_eq!(compiled(INSPECT, "conf", "yes").unwrap(), serde_json::json!({"with_defaults":true}));
        assert!(compiled(INSPECT, "ping", "extra").is_err());
        assert!(compiled(CONTROL, "pool_grow", "many").is_err());
        assert!(compiled(CONTROL, "time_limit", "t nan").is_err());
        assert!(compiled(CONTROL, "time_limit", "t inf").is_err());
        assert!(compiled(INSPECT, "conf", "maybe").is_err());
        let unknown = compiled(INSPECT, "nosuch", "").unwrap_err().to_string();
        assert!(unknown.contains("Available x commands: active"), "{unknown}");
    }

    #[test]
    fn replies_print_as_celery_prints_them() {
        let ok = celeriac_protocol::json::from_str(r#"{"ok": "pong"}"#).unwrap();
        assert_eq!(pretty(&ok), (true, "pong".into()));
        let err = celeriac_protocol::json::from_str(r#"{"error": "unknown task"}"#).unwrap();
        assert_eq!(pretty(&err), (false, "\"unknown task\"".into()));
        assert_eq!(pretty(&Value::List(Vec::new())), (true, "- empty -".into()));
    }
}
