//! `celeriac status`, `celeriac monitor`, `celeriac queues` and `celeriac
//! purge`: the fleet at a glance. Workers are found with a `ping` broadcast
//! (Python and celeriac alike), then asked at once for `stats`, `active`,
//! `reserved`, `scheduled` and `active_queues`; queue depths come from the
//! broker (on Redis every priority list and the `unacked` hash; on RabbitMQ
//! the ready count of each queue, see [`depths`]).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use celeriac_broker::Broker;
use celeriac_protocol::{Map, Value};
use clap::Args;
use serde_json::json;

use super::depths::{self, DepthReader, Depths};
use super::pidbox::{Call, Mailbox};
use super::{print_json, Fleet};
use crate::error::CliError;

/// `celeriac status` flags.
#[derive(Args, Debug, Clone)]
pub struct StatusArgs {
    /// Seconds to wait for the workers' replies.
    #[arg(short = 't', long, default_value = "1.0", value_parser = |v: &str| super::seconds("--timeout", v))]
    pub timeout: Duration,
    /// Only these nodes, comma separated.
    #[arg(short = 'd', long, value_delimiter = ',', action = clap::ArgAction::Set)]
    pub destination: Vec<String>,
    /// Also show these queues (comma separated), consumed or not.
    #[arg(short = 'Q', long, value_delimiter = ',', action = clap::ArgAction::Set)]
    pub queues: Vec<String>,
    /// Broker, settings and output.
    #[command(flatten)]
    pub fleet: Fleet,
}

/// `celeriac monitor` flags.
#[derive(Args, Debug, Clone)]
pub struct MonitorArgs {
    /// Seconds between refreshes.
    #[arg(long, default_value = "2", value_parser = |v: &str| super::seconds("--interval", v))]
    pub interval: Duration,
    /// Stop after this many refreshes (default: until Ctrl-C).
    #[arg(long)]
    pub count: Option<u64>,
    /// What to show, as `status` takes it.
    #[command(flatten)]
    pub status: StatusArgs,
}

/// `celeriac queues` flags.
#[derive(Args, Debug, Clone)]
pub struct QueuesArgs {
    /// Seconds to wait for the workers' `active_queues` replies.
    #[arg(short = 't', long, default_value = "1.0", value_parser = |v: &str| super::seconds("--timeout", v))]
    pub timeout: Duration,
    /// Only these queues, comma separated (default: every queue bound in the
    /// broker or consumed by a worker).
    #[arg(short = 'Q', long, value_delimiter = ',', action = clap::ArgAction::Set)]
    pub queues: Vec<String>,
    /// Broker, settings and output.
    #[command(flatten)]
    pub fleet: Fleet,
}

/// `celeriac purge` flags.
#[derive(Args, Debug, Clone)]
pub struct PurgeArgs {
    /// Queues to purge, comma separated (default: `task_default_queue` and `task_queues`).
    #[arg(short = 'Q', long, value_delimiter = ',', action = clap::ArgAction::Set)]
    pub queues: Vec<String>,
    /// Queues not to purge, comma separated.
    #[arg(short = 'X', long, value_delimiter = ',', action = clap::ArgAction::Set)]
    pub exclude_queues: Vec<String>,
    /// Do not ask for confirmation.
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Broker, settings and output.
    #[command(flatten)]
    pub fleet: Fleet,
}

/// One worker as `status` shows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkerView {
    /// Node name.
    pub name: String,
    /// Pool implementation (`celery.concurrency.prefork:TaskPool`, `celeriac:TokioPool`, ...).
    pub pool: String,
    /// Task slots.
    pub concurrency: i64,
    /// Tasks running.
    pub active: usize,
    /// Tasks prefetched, waiting for a slot.
    pub reserved: usize,
    /// Tasks held for their ETA.
    pub scheduled: usize,
    /// Tasks accepted since start (`stats.total`).
    pub processed: i64,
    /// Seconds since start.
    pub uptime: i64,
    /// The queues it consumes.
    pub queues: Vec<String>,
}

impl WorkerView {
    /// Tasks per second: since start, or since `before` when given.
    pub fn rate(&self, before: Option<(&WorkerView, Duration)>) -> f64 {
        match before {
            Some((b, dt)) if dt.as_secs_f64() > 0.0 => (self.processed - b.processed).max(0) as f64 / dt.as_secs_f64(),
            _ if self.uptime > 0 => self.processed as f64 / self.uptime as f64,
            _ => 0.0,
        }
    }
}

/// The fleet at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The broker, password masked.
    pub broker: String,
    /// Workers that answered `ping`.
    pub workers: Vec<WorkerView>,
    /// Queue depths.
    pub depths: Depths,
    /// When it was taken.
    pub at: Option<Instant>,
}

fn count(value: Option<&Value>) -> usize {
    match value {
        Some(Value::List(items)) => items.len(),
        _ => 0,
    }
}

fn int(value: Option<&Value>) -> i64 {
    value.and_then(Value::as_i64).unwrap_or(0)
}

/// The replies of one call, by node.
async fn ask(mailbox: &Mailbox, method: &str, nodes: &[String], timeout: Duration) -> BTreeMap<String, Value> {
    let call = Call::new(method, Map::new(), timeout).to(nodes);
    match mailbox.call(&call).await {
        Ok(replies) => replies.into_iter().collect(),
        Err(e) => {
            tracing::warn!("{method}: {e}");
            BTreeMap::new()
        }
    }
}

/// Finds the workers (`ping`), then asks them what they do.
pub async fn workers(mailbox: &Mailbox, only: &[String], timeout: Duration) -> Result<Vec<WorkerView>, CliError> {
    let ping = Call::new("ping", Map::new(), timeout).to(only);
    let nodes: Vec<String> =
        mailbox.call(&ping).await?.into_iter().map(|(n, _)| n).collect::<BTreeSet<_>>().into_iter().collect();
    if nodes.is_empty() {
        return Ok(Vec::new());
    }
    let (stats, active, reserved, scheduled, queues) = tokio::join!(
        ask(mailbox, "stats", &nodes, timeout),
        ask(mailbox, "active", &nodes, timeout),
        ask(mailbox, "reserved", &nodes, timeout),
        ask(mailbox, "scheduled", &nodes, timeout),
        ask(mailbox, "active_queues", &nodes, timeout),
    );
    Ok(nodes
        .into_iter()
        .map(|name| {
            let s = stats.get(&name).and_then(Value::as_map);
            let pool = s.and_then(|s| s.get("pool")).and_then(Value::as_map);
            let processed = match s.and_then(|s| s.get("total")) {
                Some(Value::Map(m)) => m.values().filter_map(Value::as_i64).sum(),
                _ => 0,
            };
            let queue_names = match queues.get(&name) {
                Some(Value::List(qs)) => qs
                    .iter()
                    .filter_map(|q| q.as_map().and_then(|q| q.get("name")).and_then(Value::as_str).map(str::to_owned))
                    .collect(),
                _ => Vec::new(),
            };
            WorkerView {
                pool: pool.and_then(|p| p.get("implementation")).and_then(Value::as_str).unwrap_or("?").to_owned(),
                concurrency: int(pool.and_then(|p| p.get("max-concurrency"))),
                active: count(active.get(&name)),
                reserved: count(reserved.get(&name)),
                scheduled: count(scheduled.get(&name)),
                processed,
                uptime: int(s.and_then(|s| s.get("uptime"))),
                queues: queue_names,
                name,
            }
        })
        .collect())
}

/// The queues to show: those asked for, those the workers consume, those
/// the broker knows of and the default queue.
async fn queue_names(
    reader: &mut DepthReader,
    asked: &[String],
    workers: &[WorkerView],
    default: &str,
) -> Result<Vec<String>, CliError> {
    let mut names: BTreeSet<String> = asked.iter().cloned().collect();
    names.extend(workers.iter().flat_map(|w| w.queues.iter().cloned()));
    names.extend(reader.known_queues().await?);
    names.insert(default.to_owned());
    Ok(names.into_iter().filter(|q| !depths::is_plumbing(q)).collect())
}

/// Takes a snapshot of the fleet.
pub async fn snapshot(
    broker: &Broker,
    mailbox: &Mailbox,
    reader: &mut DepthReader,
    args: &StatusArgs,
    default_queue: &str,
) -> Result<Snapshot, CliError> {
    let workers = workers(mailbox, &args.destination, args.timeout).await?;
    let names = if args.destination.is_empty() || !args.queues.is_empty() {
        queue_names(reader, &args.queues, &workers, default_queue).await?
    } else {
        workers.iter().flat_map(|w| w.queues.iter().cloned()).collect::<BTreeSet<_>>().into_iter().collect()
    };
    let depths = reader.read(&names).await?;
    Ok(Snapshot { broker: broker.masked_url(), workers, depths, at: Some(Instant::now()) })
}

fn consumers<'a>(workers: &'a [WorkerView], queue: &str) -> Vec<&'a str> {
    workers.iter().filter(|w| w.queues.iter().any(|q| q == queue)).map(|w| w.name.as_str()).collect()
}

/// The snapshot as JSON; rates against `before` when given.
pub fn to_json_view(now: &Snapshot, before: Option<&Snapshot>) -> serde_json::Value {
    let dt = match (now.at, before.and_then(|b| b.at)) {
        (Some(a), Some(b)) => Some(a.saturating_duration_since(b)),
        _ => None,
    };
    let workers: Vec<serde_json::Value> = now
        .workers
        .iter()
        .map(|w| {
            let prev = before.and_then(|b| b.workers.iter().find(|p| p.name == w.name));
            json!({
                "name": w.name, "pool": w.pool, "concurrency": w.concurrency, "active": w.active,
                "reserved": w.reserved, "scheduled": w.scheduled, "processed": w.processed,
                "uptime": w.uptime, "rate": w.rate(prev.zip(dt)), "queues": w.queues,
            })
        })
        .collect();
    let queues: Vec<serde_json::Value> = now
        .depths
        .queues
        .iter()
        .map(|(name, d)| {
            let mut v = d.to_json();
            v["name"] = json!(name);
            v["consumers"] = json!(consumers(&now.workers, name));
            v
        })
        .collect();
    json!({
        "broker": now.broker,
        "workers": workers,
        "queues": queues,
        "unacked": now.depths.unacked_total,
        "timestamp": celeriac_protocol::event::now_timestamp(),
    })
}

/// The snapshot as text for a terminal.
pub fn to_text(now: &Snapshot, before: Option<&Snapshot>) -> String {
    let dt = match (now.at, before.and_then(|b| b.at)) {
        (Some(a), Some(b)) => Some(a.saturating_duration_since(b)),
        _ => None,
    };
    let mut out = format!("broker: {}\n\n", now.broker);
    let width = now.workers.iter().map(|w| w.name.len()).max().unwrap_or(6).max(6);
    out.push_str(&format!(
        "{:<width$}  {:>5}  {:>6}  {:>8}  {:>9}  {:>9}  {:>7}  pool\n",
        "WORKER", "SLOTS", "ACTIVE", "RESERVED", "SCHEDULED", "PROCESSED", "TASKS/S"
    ));
    if now.workers.is_empty() {
        out.push_str("  (no worker answered)\n");
    }
    for w in &now.workers {
        let prev = before.and_then(|b| b.workers.iter().find(|p| p.name == w.name));
        out.push_str(&format!(
            "{:<width$}  {:>5}  {:>6}  {:>8}  {:>9}  {:>9}  {:>7.2}  {}\n",
            w.name,
            w.concurrency,
            w.active,
            w.reserved,
            w.scheduled,
            w.processed,
            w.rate(prev.zip(dt)),
            w.pool
        ));
    }
    let qwidth = now.depths.queues.keys().map(String::len).max().unwrap_or(5).max(5);
    out.push_str(&format!(
        "\n{:<qwidth$}  {:>8}  {:>7}  {:<20}  CONSUMERS\n",
        "QUEUE", "MESSAGES", "UNACKED", "BY PRIORITY"
    ));
    for (name, d) in &now.depths.queues {
        let by: Vec<String> = d.by_priority.iter().map(|(p, n)| format!("{p}:{n}")).collect();
        let unacked = d.unacked.map_or("-".to_owned(), |n| n.to_string());
        out.push_str(&format!(
            "{:<qwidth$}  {:>8}  {:>7}  {:<20}  {}\n",
            name,
            d.messages,
            unacked,
            by.join(" "),
            consumers(&now.workers, name).join(", ")
        ));
    }
    match now.depths.unacked_total {
        Some(n) => out.push_str(&format!("\nunacked (all queues): {n}\n")),
        None => {
            out.push_str("\nunacked: not reported by this broker (see each worker's ACTIVE, RESERVED, SCHEDULED)\n")
        }
    }
    out
}

struct Session {
    broker: Broker,
    mailbox: Mailbox,
    reader: DepthReader,
    default_queue: String,
}

async fn open(fleet: &Fleet) -> Result<Session, CliError> {
    let settings = fleet.settings()?;
    let broker = crate::assemble::broker(&settings)?;
    let mailbox = Mailbox::new(&broker)?;
    let declared = settings.task_queues.keys().cloned().collect();
    let reader = DepthReader::open(&broker, declared).await?;
    Ok(Session { broker, mailbox, reader, default_queue: settings.task_default_queue })
}

/// `celeriac status`.
pub async fn status(args: StatusArgs) -> Result<(), CliError> {
    let mut s = open(&args.fleet).await?;
    let snap = snapshot(&s.broker, &s.mailbox, &mut s.reader, &args, &s.default_queue).await?;
    if args.fleet.json {
        print_json(&to_json_view(&snap, None));
    } else {
        print!("{}", to_text(&snap, None));
    }
    Ok(())
}

/// `celeriac monitor`: `status` again every `--interval`, rates from one
/// refresh to the next; with `--json`, one JSON document per line.
pub async fn monitor(args: MonitorArgs) -> Result<(), CliError> {
    let mut s = open(&args.status.fleet).await?;
    let tty = std::io::stdout().is_terminal() && !args.status.fleet.json;
    let mut before: Option<Snapshot> = None;
    let mut n = 0u64;
    let mut ticks = tokio::time::interval(args.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        let snap = snapshot(&s.broker, &s.mailbox, &mut s.reader, &args.status, &s.default_queue).await?;
        if args.status.fleet.json {
            print_json(&to_json_view(&snap, before.as_ref()));
        } else {
            let text = to_text(&snap, before.as_ref());
            if tty {
                // Clear the screen and go home, then draw.
                print!("\x1b[2J\x1b[H");
            }
            let now = jiff::Timestamp::now().strftime("%Y-%m-%d %H:%M:%S UTC");
            print!("celeriac monitor, every {:?} (Ctrl-C to stop) {now}\n{text}", args.interval);
            if !tty {
                println!();
            }
        }
        let _ = std::io::stdout().flush();
        before = Some(snap);
        n += 1;
        if args.count.is_some_and(|c| n >= c) {
            return Ok(());
        }
    }
}

/// `celeriac queues`: every queue with its depth and consumers.
pub async fn queues(args: QueuesArgs) -> Result<(), CliError> {
    let mut s = open(&args.fleet).await?;
    let call = Call::new("active_queues", Map::new(), args.timeout);
    let replies = s.mailbox.call(&call).await?;
    let workers: Vec<WorkerView> = replies
        .into_iter()
        .map(|(name, v)| WorkerView {
            queues: match v {
                Value::List(qs) => qs
                    .iter()
                    .filter_map(|q| q.as_map().and_then(|q| q.get("name")).and_then(Value::as_str).map(str::to_owned))
                    .collect(),
                _ => Vec::new(),
            },
            name,
            ..WorkerView::default()
        })
        .collect();
    let names = if args.queues.is_empty() {
        queue_names(&mut s.reader, &[], &workers, &s.default_queue).await?
    } else {
        args.queues.clone()
    };
    let depths = s.reader.read(&names).await?;
    if args.fleet.json {
        let list: Vec<serde_json::Value> = depths
            .queues
            .iter()
            .map(|(name, d)| {
                let mut v = d.to_json();
                v["name"] = json!(name);
                v["consumers"] = json!(consumers(&workers, name));
                v
            })
            .collect();
        print_json(&json!(list));
    } else {
        let snap = Snapshot { broker: s.broker.masked_url(), workers, depths, at: None };
        let text = to_text(&snap, None);
        // The queue table only.
        let table = text.split_once("\nQUEUE").map(|(_, t)| format!("QUEUE{t}")).unwrap_or(text);
        print!("{table}");
    }
    Ok(())
}

/// `celeriac purge`: empties queues (every priority list), as `celery purge`.
pub async fn purge(args: PurgeArgs) -> Result<(), CliError> {
    let settings = args.fleet.settings()?;
    let mut names: Vec<String> = if args.queues.is_empty() {
        std::iter::once(settings.task_default_queue.clone()).chain(settings.task_queues.keys().cloned()).collect()
    } else {
        args.queues.clone()
    };
    names.retain(|q| !args.exclude_queues.contains(q));
    names.sort();
    names.dedup();
    if names.is_empty() {
        return Err(CliError::Setting("no queue left to purge (-X excluded them all)".into()));
    }
    if !args.force {
        let question = format!(
            "{} will remove all messages from {} queue(s): {}.\nThere is no undo for this operation!\nAre you sure you want to delete all of these messages? [y/N] ",
            "celeriac purge",
            names.len(),
            names.join(", ")
        );
        if !std::io::stdin().is_terminal() {
            return Err(CliError::Setting(format!(
                "purging {} needs -f/--force when not asked on a terminal",
                names.join(", ")
            )));
        }
        eprint!("{question}");
        let mut answer = String::new();
        let _ = std::io::stdin().read_line(&mut answer);
        if !matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
            eprintln!("Nothing purged.");
            return Ok(());
        }
    }
    let broker = crate::assemble::broker(&settings)?;
    let mut purged = serde_json::Map::new();
    let mut total = 0u64;
    for queue in &names {
        let n = broker.purge(queue).await?;
        total += n;
        purged.insert(queue.clone(), json!(n));
    }
    if args.fleet.json {
        print_json(&json!({"purged": purged, "total": total}));
    } else if total == 0 {
        println!("No messages purged from {} {}.", names.len(), if names.len() == 1 { "queue" } else { "queues" });
    } else {
        println!(
            "Purged {total} {} from {} known task {}.",
            if total == 1 { "message" } else { "messages" },
            names.len(),
            if names.len() == 1 { "queue" } else { "queues" }
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_since_start_or_since_the_last_refresh() {
        let w = WorkerView { processed: 100, uptime: 50, ..WorkerView::default() };
        assert_eq!(w.rate(None), 2.0);
        let before = WorkerView { processed: 90, ..w.clone() };
        assert_eq!(w.rate(Some((&before, Duration::from_secs(2)))), 5.0);
        let restarted = WorkerView { processed: 1000, ..w.clone() };
        assert_eq!(w.rate(Some((&restarted, Duration::from_secs(2)))), 0.0);
        assert_eq!(WorkerView::default().rate(None), 0.0);
    }

    #[test]
    fn the_text_view_lists_workers_and_queues() {
        let mut depths = Depths { unacked_total: Some(3), ..Depths::default() };
        let mut d = depths::Depth { messages: 7, unacked: Some(2), ..Default::default() };
        d.by_priority.insert(0, 4);
        d.by_priority.insert(9, 3);
        depths.queues.insert("workflow.hpc".into(), d);
        let w = WorkerView {
            name: "rs@h".into(),
            queues: vec!["workflow.hpc".into()],
            concurrency: 4,
            ..Default::default()
        };
        let snap = Snapshot { broker: "redis://h:6379/0".into(), workers: vec![w], depths, at: None };
        let text = to_text(&snap, None);
        assert!(text.contains("workflow.hpc"), "{text}");
        assert!(text.contains("0:4 9:3"), "{text}");
        assert!(text.contains("rs@h"), "{text}");
        let v = to_json_view(&snap, None);
        assert_eq!(v["queues"][0]["consumers"], json!(["rs@h"]));
        assert_eq!(v["queues"][0]["by_priority"]["9"], json!(3));
        assert_eq!(v["unacked"], json!(3));
    }
}
