//! The Redis transport's side of settling: [`RedisSettler`] implements
//! [`Settle`] over kombu's ack emulation (`restore.rs`, `acks.rs`,
//! `deferred.rs`), for the deliveries and consumers the transport hands out.

use std::sync::Arc;

use super::{DeferredKind, Inner};
use crate::delivery::Settlement;
use crate::transport::{BrokerFuture, Settle};
use crate::window::{Held, Window};

/// Settles Redis deliveries (see the module docs).
#[derive(Debug)]
pub(crate) struct RedisSettler(pub Arc<Inner>);

impl Settle for RedisSettler {
    fn ack<'a>(&'a self, held: &'a Held) -> BrokerFuture<'a, ()> {
        Box::pin(Inner::ack_held(&self.0, held))
    }

    fn reject<'a>(&'a self, held: &'a Held) -> BrokerFuture<'a, ()> {
        // kombu's reject(requeue=False) removes the message as an ack does.
        Box::pin(Inner::ack_held(&self.0, held))
    }

    fn requeue<'a>(&'a self, held: &'a Held) -> BrokerFuture<'a, ()> {
        Box::pin(self.0.requeue_held(held))
    }

    fn extend<'a>(&'a self, window: &'a Window, seq: u64, held: &'a Held) -> BrokerFuture<'a, ()> {
        Box::pin(self.0.extend_held(window, seq, held))
    }

    fn defer(&self, held: Held, how: Settlement) -> bool {
        let kind = match how {
            Settlement::Ack | Settlement::Reject => DeferredKind::Remove,
            Settlement::Requeue => DeferredKind::Requeue,
        };
        self.0.deferred.push(&self.0, held, kind)
    }

    fn restore_all<'a>(&'a self, held: &'a [(u64, Held)]) -> BrokerFuture<'a, usize> {
        Box::pin(self.0.restore_all(held))
    }
}
