//! `celeriac call NAME --args JSON --kwargs JSON [--wait]` and `celeriac
//! result ID`: send a task by name as `celery call` does (any worker of the
//! fleet may run it, Python or celeriac) and read a result as
//! `AsyncResult.get()` does, through `celeriac_worker::Client`.

use std::time::Duration;

use celeriac_backend::GetError;
use celeriac_broker::{Expires, Producer, SendOptions};
use celeriac_protocol::{Map, PyDateTime, Value};
use celeriac_worker::{Client, ResultError};
use clap::Args;
use serde_json::json;

use super::{from_json, print_json, to_json, Fleet};
use crate::error::CliError;

/// `celeriac call` flags (`celery call`'s, plus `--wait`).
#[derive(Args, Debug, Clone)]
pub struct CallArgs {
    /// The task's registered name, e.g. `science.calibrate`.
    pub name: String,
    /// Positional arguments: a JSON list, e.g. `--args '[42]'`.
    #[arg(short = 'a', long, default_value = "[]")]
    pub args: String,
    /// Keyword arguments: a JSON object, e.g. `--kwargs '{"detector": "d7"}'`.
    #[arg(short = 'k', long, default_value = "{}")]
    pub kwargs: String,
    /// Queue to send it to (default: routing by `task_routes`, else `task_default_queue`).
    #[arg(short = 'Q', long)]
    pub queue: Option<String>,
    /// Exchange to send it to.
    #[arg(long)]
    pub exchange: Option<String>,
    /// Routing key to send it with.
    #[arg(long)]
    pub routing_key: Option<String>,
    /// Message priority, 0 to 255 (Redis: 0 is served first; 0-9 matter).
    #[arg(long)]
    pub priority: Option<u8>,
    /// Run no sooner than this many seconds from now.
    #[arg(long, value_parser = |v: &str| super::seconds("--countdown", v))]
    pub countdown: Option<Duration>,
    /// Run no sooner than this time (ISO 8601, e.g. 2030-01-01T00:00:00+00:00).
    #[arg(long)]
    pub eta: Option<String>,
    /// Discard it if not started within this many seconds.
    #[arg(long, value_parser = |v: &str| super::seconds("--expires", v))]
    pub expires: Option<Duration>,
    /// Wait for the result and print it.
    #[arg(short = 'w', long)]
    pub wait: bool,
    /// With `--wait`: seconds to wait for the result (default: for ever).
    #[arg(short = 't', long, value_parser = |v: &str| super::seconds("--timeout", v))]
    pub timeout: Option<Duration>,
    /// Broker, settings and output.
    #[command(flatten)]
    pub fleet: Fleet,
}

/// `celeriac result` flags.
#[derive(Args, Debug, Clone)]
pub struct ResultArgs {
    /// The task id.
    pub id: String,
    /// Wait until the task is ready (else: its state now).
    #[arg(short = 'w', long)]
    pub wait: bool,
    /// With `--wait`: seconds to wait (default: for ever).
    #[arg(short = 't', long, value_parser = |v: &str| super::seconds("--timeout", v))]
    pub timeout: Option<Duration>,
    /// Print the traceback of a failed task instead of its result.
    #[arg(long)]
    pub traceback: bool,
    /// Broker, settings and output.
    #[command(flatten)]
    pub fleet: Fleet,
}

/// Reads a JSON argument of `flag` that must be of `kind`.
fn json_arg(flag: &str, text: &str) -> Result<Value, CliError> {
    let parsed: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        CliError::Setting(format!("{flag}: not JSON ({e}); e.g. --args '[1, 2]' --kwargs '{{\"x\": 1}}'"))
    })?;
    from_json(&parsed).map_err(|e| CliError::Setting(format!("{flag}: {e}")))
}

async fn client(fleet: &Fleet) -> Result<Client, CliError> {
    let settings = fleet.settings()?;
    let origin = format!("gen{}@{}", std::process::id(), celeriac_broker::producer::hostname());
    let producer =
        Producer::new(crate::assemble::broker(&settings)?, crate::assemble::producer_config(&settings, &origin)?);
    let backend = crate::assemble::backend(&settings).await?;
    Ok(Client::new(producer, backend))
}

/// What waiting gave: the JSON view and a line of text, or for a task
/// that failed its JSON view (if it has one) and the error.
type Outcome = Result<(serde_json::Value, String), (Option<serde_json::Value>, String)>;

fn outcome(id: &str, got: Result<Value, ResultError>, traceback: bool) -> Outcome {
    match got {
        Ok(value) => {
            let text = match &value {
                Value::Str(s) => s.clone(),
                other => to_json(other).to_string(),
            };
            Ok((json!({"id": id, "state": "SUCCESS", "result": to_json(&value)}), text))
        }
        Err(ResultError::Get(e)) => match *e {
            GetError::Failed(failed) => {
                let exc = &failed.exception;
                let message: Vec<String> = exc.exc_message.iter().map(|v| to_json(v).to_string()).collect();
                let repr = format!("{}({})", exc.exc_type, message.join(", "));
                let view = json!({
                    "id": id, "state": failed.state.as_str(),
                    "exception": to_json(&exc.to_value()), "traceback": failed.traceback,
                });
                let text = match (&failed.traceback, traceback) {
                    (Some(tb), true) => tb.clone(),
                    _ => format!("task {id} {}: {repr}", failed.state.as_str()),
                };
                Err((Some(view), text))
            }
            other => Err((None, other.to_string())),
        },
        Err(e) => Err((None, e.to_string())),
    }
}

/// Prints what waiting gave (`--json` or text) and turns a failure into the error.
fn report(outcome: Outcome, json_wanted: bool) -> Result<(), CliError> {
    match outcome {
        Ok((view, text)) => {
            if json_wanted {
                print_json(&view);
            } else {
                println!("{text}");
            }
            Ok(())
        }
        Err((view, message)) => {
            if let (Some(view), true) = (view, json_wanted) {
                print_json(&view);
            }
            Err(CliError::TaskFailed(message))
        }
    }
}

/// `celeriac call`.
pub async fn call(args: CallArgs) -> Result<(), CliError> {
    let positional = match json_arg("--args", &args.args)? {
        Value::List(items) => items,
        other => return Err(CliError::Setting(format!("--args must be a JSON list, not {}", other.type_name()))),
    };
    let keywords: Map = match json_arg("--kwargs", &args.kwargs)? {
        Value::Map(m) => m,
        other => return Err(CliError::Setting(format!("--kwargs must be a JSON object, not {}", other.type_name()))),
    };
    let eta = match &args.eta {
        Some(text) => Some(PyDateTime::parse_iso(text).map_err(|e| CliError::Setting(format!("--eta {text:?}: {e}")))?),
        None => None,
    };
    let options = SendOptions {
        queue: args.queue.clone(),
        exchange: args.exchange.clone(),
        routing_key: args.routing_key.clone(),
        priority: args.priority,
        countdown: args.countdown,
        eta,
        expires: args.expires.map(Expires::In),
        ..SendOptions::default()
    };
    let client = client(&args.fleet).await?;
    let sent = client.send_task(&args.name, positional, keywords, options).await?;
    if !args.wait {
        if args.fleet.json {
            print_json(&json!({"id": sent.id()}));
        } else {
            println!("{}", sent.id());
        }
        return Ok(());
    }
    let got = sent.get(args.timeout).await;
    report(outcome(sent.id(), got, false), args.fleet.json)
}

/// `celeriac result`.
pub async fn result(args: ResultArgs) -> Result<(), CliError> {
    let client = client(&args.fleet).await?;
    let handle = client.result(&args.id);
    if args.wait {
        let got = handle.get(args.timeout).await;
        return report(outcome(&args.id, got, args.traceback), args.fleet.json);
    }
    let meta = handle.meta().await.map_err(|e| CliError::TaskFailed(e.to_string()))?;
    if args.fleet.json {
        let mut view = to_json(&meta.to_value());
        view["task_id"] = json!(args.id);
        print_json(&view);
        return Ok(());
    }
    let state = meta.status.as_str().to_owned();
    match state.as_str() {
        "SUCCESS" => match &meta.result {
            Value::Str(s) => println!("{s}"),
            other => println!("{}", to_json(other)),
        },
        _ if args.traceback && meta.traceback.is_some() => println!("{}", meta.traceback.unwrap_or_default()),
        "FAILURE" | "REVOKED" => println!("{state}: {}", to_json(&meta.result)),
        _ => println!("{state}"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_arguments_are_checked() {
        assert_eq!(json_arg("--args", "[1, \"a\"]").unwrap(), Value::List(vec![Value::Int(1), Value::Str("a".into())]));
        let e = json_arg("--args", "[1,").unwrap_err().to_string();
        assert!(e.contains("--args: not JSON"), "{e}");
        assert!(json_arg("--args", "[1e999]").is_err(), "not a number JSON has");
    }
}
