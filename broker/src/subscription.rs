//! A broadcast subscription, whatever the transport: messages of a fanout
//! exchange (remote control) or of a topic exchange (events), each as the
//! envelope Celery would see, delivered over a bounded channel.

use std::pin::Pin;
use std::task::{Context, Poll};

use celeriac_protocol::Envelope;
use tokio::sync::mpsc;
use tokio_util::sync::DropGuard;

use crate::error::BrokerError;

/// One message received on a fanout exchange.
#[derive(Clone, Debug)]
pub struct FanoutMessage {
    /// The exchange (on Redis read from the channel, as kombu does).
    pub exchange: String,
    /// The routing key part of the channel, if any.
    pub routing_key: Option<String>,
    /// Where it came from: the Redis channel without the global key prefix, or
    /// the AMQP queue it was consumed from.
    pub channel: String,
    /// The envelope (on AMQP built from the delivery's properties).
    pub envelope: Envelope,
}

/// Most fanout messages waiting for their reader (remote control, events):
/// a flood of broadcasts cannot grow a subscriber's memory past this.
pub(crate) const SUBSCRIPTION_BUFFER: usize = 1024;

/// A live fanout subscription; dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    rx: mpsc::Receiver<Result<FanoutMessage, BrokerError>>,
    pattern: String,
    _stop: DropGuard,
}

impl Subscription {
    pub(crate) fn new(
        rx: mpsc::Receiver<Result<FanoutMessage, BrokerError>>,
        pattern: String,
        stop: DropGuard,
    ) -> Subscription {
        Subscription { rx, pattern, _stop: stop }
    }

    /// The next message; errors are undecodable messages (the subscription goes on).
    pub async fn next(&mut self) -> Option<Result<FanoutMessage, BrokerError>> {
        self.rx.recv().await
    }

    /// What was subscribed: the Redis pattern (with the global key prefix), or
    /// the AMQP queue name.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }
}

impl futures_util::Stream for Subscription {
    type Item = Result<FanoutMessage, BrokerError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().rx.poll_recv(cx)
    }
}
