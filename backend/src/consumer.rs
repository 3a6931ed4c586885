//! One pub/sub connection shared by every waiter of a backend, as Celery's
//! `ResultConsumer` shares one `PubSub`.
//!
//! Each waiter registers the channel it waits on (a task's key) and gets the
//! last payload published there through a `watch` channel; waiters on the same
//! task share one subscription. A single task owns the connection: it batches
//! SUBSCRIBE/UNSUBSCRIBE requests, hands published records to the waiters, and
//! when the connection drops it bumps a generation number so every waiter
//! subscribes again (which reconnects) and re-reads its record: whatever was
//! published while the connection was down is found by that read.
//!
//! A waiter that cannot subscribe at all (pub/sub refused, Redis down) polls
//! instead, and tries to subscribe again on every poll.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use tokio::sync::{mpsc, oneshot, watch};

use crate::connection::Connection;

/// How often an idle subscribed connection is checked with PING.
const HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(25);

/// The last record published on a channel.
pub(crate) type Payload = Option<Arc<Vec<u8>>>;

/// Shares one pub/sub connection among many waiters.
#[derive(Clone)]
pub(crate) struct ResultConsumer {
    shared: Arc<Shared>,
    commands: mpsc::UnboundedSender<Command>,
}

struct Shared {
    slots: Mutex<HashMap<String, Slot>>,
    generation: watch::Sender<u64>,
}

impl Shared {
    fn slots(&self) -> MutexGuard<'_, HashMap<String, Slot>> {
        match self.slots.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

struct Slot {
    latest: watch::Sender<Payload>,
    waiters: usize,
}

enum Command {
    Subscribe { channel: String, done: oneshot::Sender<Result<(), String>> },
    Unsubscribe { channel: String },
}

/// A waiter's registration on one channel; unsubscribes when the last one drops.
pub(crate) struct Subscription {
    consumer: ResultConsumer,
    channel: String,
    /// The last record published on the channel.
    pub latest: watch::Receiver<Payload>,
    /// Changes whenever the pub/sub connection is lost.
    pub generation: watch::Receiver<u64>,
}

impl ResultConsumer {
    /// Starts the task that owns the pub/sub connection (it connects on the
    /// first subscription and stops when every handle is gone).
    pub fn start(connection: Connection) -> ResultConsumer {
        let (generation, _) = watch::channel(0);
        let shared = Arc::new(Shared { slots: Mutex::new(HashMap::new()), generation });
        let (commands, receiver) = mpsc::unbounded_channel();
        let driver = Driver {
            connection,
            shared: shared.clone(),
            link: None,
            subscribed: HashSet::new(),
            health_check: HEALTH_CHECK_INTERVAL,
        };
        tokio::spawn(driver.run(receiver));
        ResultConsumer { shared, commands }
    }

    /// Registers a waiter on `channel`. Nothing is sent to Redis until
    /// [`Subscription::subscribe`].
    pub fn register(&self, channel: &str) -> Subscription {
        let mut generation = self.shared.generation.subscribe();
        generation.mark_unchanged();
        let latest = {
            let mut slots = self.shared.slots();
            let slot = slots
                .entry(channel.to_owned())
                .or_insert_with(|| Slot { latest: watch::Sender::new(None), waiters: 0 });
            slot.waiters += 1;
            slot.latest.subscribe()
        };
        Subscription { consumer: self.clone(), channel: channel.to_owned(), latest, generation }
    }

    /// How many channels have waiters (for tests and metrics).
    pub fn channels(&self) -> usize {
        self.shared.slots().len()
    }
}

impl Subscription {
    /// Makes sure the channel is subscribed on a live connection (connecting
    /// if needed); when this returns `Ok`, every later PUBLISH reaches the waiter.
    pub async fn subscribe(&mut self) -> Result<(), String> {
        self.generation.mark_unchanged();
        let (done, reply) = oneshot::channel();
        self.consumer
            .commands
            .send(Command::Subscribe { channel: self.channel.clone(), done })
            .map_err(|_| "the pub/sub task has stopped".to_owned())?;
        reply.await.map_err(|_| "the pub/sub task has stopped".to_owned())?
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let last = {
            let mut slots = self.consumer.shared.slots();
            match slots.get_mut(&self.channel) {
                Some(slot) if slot.waiters > 1 => {
                    slot.waiters -= 1;
                    false
                }
                Some(_) => {
                    slots.remove(&self.channel);
                    true
                }
                None => false,
            }
        };
        if last {
            let _ = self.consumer.commands.send(Command::Unsubscribe { channel: std::mem::take(&mut self.channel) });
        }
    }
}

struct Link {
    sink: PubSubSink,
    stream: PubSubStream,
}

struct Driver {
    connection: Connection,
    shared: Arc<Shared>,
    link: Option<Link>,
    /// Channels subscribed on the current link.
    subscribed: HashSet<String>,
    health_check: Duration,
}

impl Driver {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut health = tokio::time::interval(self.health_check);
        health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                command = commands.recv() => {
                    let Some(command) = command else { break };
                    let mut batch = vec![command];
                    while let Ok(more) = commands.try_recv() {
                        batch.push(more);
                    }
                    self.handle(batch).await;
                }
                message = next_message(&mut self.link) => match message {
                    Some(message) => self.dispatch(&message),
                    None => self.lost("the pub/sub connection closed"),
                },
                _ = health.tick(), if self.link.is_some() => self.check_health().await,
            }
        }
        tracing::debug!("result pub/sub task stopped");
    }

    fn dispatch(&self, message: &redis::Msg) {
        let channel = message.get_channel_name();
        let slots = self.shared.slots();
        if let Some(slot) = slots.get(channel) {
            slot.latest.send_replace(Some(Arc::new(message.get_payload_bytes().to_vec())));
        }
    }

    fn lost(&mut self, why: &str) {
        if self.link.take().is_some() {
            tracing::warn!(url = %self.connection.url(), reason = why, "result pub/sub connection lost; waiters re-subscribe");
        }
        self.subscribed.clear();
        self.shared.generation.send_modify(|g| *g += 1);
    }

    async fn check_health(&mut self) {
        let Some(link) = self.link.as_mut() else { return };
        let ping = tokio::time::timeout(self.health_check, link.sink.ping::<redis::Value>()).await;
        if !matches!(ping, Ok(Ok(_))) {
            self.lost("no answer to PING");
        }
    }

    async fn handle(&mut self, batch: Vec<Command>) {
        let mut to_subscribe = Vec::new();
        let mut replies = Vec::new();
        let mut to_unsubscribe = Vec::new();
        {
            let slots = self.shared.slots();
            for command in batch {
                match command {
                    Command::Subscribe { channel, done } => {
                        if slots.contains_key(&channel)
                            && !self.subscribed.contains(&channel)
                            && !to_subscribe.contains(&channel)
                        {
                            to_subscribe.push(channel);
                        }
                        replies.push(done);
                    }
                    Command::Unsubscribe { channel } => {
                        // A new waiter may have registered since the last one left.
                        if !slots.contains_key(&channel) && self.subscribed.remove(&channel) {
                            to_unsubscribe.push(channel);
                        }
                    }
                }
            }
        }
        if !to_unsubscribe.is_empty() {
            if let Some(link) = self.link.as_mut() {
                if let Err(e) = link.sink.unsubscribe(&to_unsubscribe).await {
                    self.lost(&e.to_string());
                }
            }
        }
        let result = if to_subscribe.is_empty() { Ok(()) } else { self.subscribe(&to_subscribe).await };
        for done in replies {
            let _ = done.send(result.clone());
        }
    }

    async fn subscribe(&mut self, channels: &[String]) -> Result<(), String> {
        if self.link.is_none() {
            let pubsub = self.connection.pubsub().await.map_err(|e| format!("cannot open pub/sub: {e}"))?;
            let (sink, stream) = pubsub.split();
            self.link = Some(Link { sink, stream });
        }
        let Some(link) = self.link.as_mut() else { return Err("no pub/sub connection".into()) };
        match tokio::time::timeout(self.health_check, link.sink.subscribe(channels)).await {
            Ok(Ok(())) => {
                self.subscribed.extend(channels.iter().cloned());
                Ok(())
            }
            Ok(Err(e)) => {
                let message = format!("SUBSCRIBE failed: {e}");
                self.lost(&message);
                Err(message)
            }
            Err(_) => {
                self.lost("SUBSCRIBE timed out");
                Err("SUBSCRIBE timed out".into())
            }
        }
    }
}

async fn next_message(link: &mut Option<Link>) -> Option<redis::Msg> {
    match link {
        Some(link) => link.stream.next().await,
        None => std::future::pending().await,
    }
}
