//! A message handed to a consumer, and its settlement: ack, reject or requeue,
//! each at most once.

use std::sync::Arc;

use celeriac_protocol::{Envelope, Message};
use tracing::error;

use crate::error::BrokerError;
use crate::transport::Settler;
use crate::window::Window;

/// How a delivery was settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Settled {
    Acked,
    Rejected,
    Requeued,
}

impl Settled {
    fn word(self) -> &'static str {
        match self {
            Settled::Acked => "acked",
            Settled::Rejected => "rejected",
            Settled::Requeued => "requeued",
        }
    }
}

/// What to do with a delivery, for [`Delivery::settle`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settlement {
    /// Done with it: [`Delivery::ack`].
    Ack,
    /// Drop it: [`Delivery::reject`].
    Reject,
    /// Put it back on its queue: [`Delivery::requeue`].
    Requeue,
}

/// How [`Delivery::settle`] went.
#[derive(Debug)]
pub enum SettleOutcome {
    /// Settled now (or it already was, the same way).
    Done,
    /// The broker could not be reached: the settlement is retried in the
    /// background, and the prefetch slot is free already. If it never gets
    /// through, the message is restored after the visibility timeout.
    Deferred(BrokerError),
    /// It could not be settled (already settled another way, handed back by
    /// a restore, or too many deferred settlements): if its prefetch slot was
    /// held, it is free now, and the message is left to the visibility timeout.
    Failed(BrokerError),
}

/// A message received from a queue, held (counted against the consumer's
/// prefetch and recorded as unacked) until settled.
///
/// Settle it with [`Delivery::ack`], [`Delivery::reject`] or
/// [`Delivery::requeue`]. Repeating the same call is a no-op; a different one
/// after settling is an error. A failed settle (Redis unreachable for longer
/// than `settle_timeout`) leaves the delivery unsettled, so it can be retried.
/// Dropping an unsettled delivery keeps its prefetch slot and its `unacked`
/// record, like a message a kombu consumer never acked: it comes back through
/// [`crate::Consumer::restore_unacked`] or the visibility timeout.
#[derive(Debug)]
pub struct Delivery {
    /// The message with kombu's delivery bookkeeping, as it was in the queue.
    pub envelope: Envelope,
    /// The queue it came from (without priority suffix or key prefix).
    pub queue: String,
    settler: Settler,
    window: Arc<Window>,
    seq: u64,
    settled: Option<Settled>,
    left: bool,
}

impl Delivery {
    pub(crate) fn new(envelope: Envelope, queue: String, settler: Settler, window: Arc<Window>, seq: u64) -> Delivery {
        Delivery { envelope, queue, settler, window, seq, settled: None, left: false }
    }

    /// Gives the delivery up on purpose, unsettled: it stays held (and in
    /// `unacked`) until [`crate::Consumer::restore_unacked`] hands it back at
    /// shutdown, or the visibility timeout does. Dropping it unsettled does
    /// the same but warns, as that is usually a bug.
    pub fn leave_unacked(&mut self) {
        self.left = true;
    }

    /// Gives the delivery up without settling it: its prefetch slot is free
    /// at once, and its message stays in the broker's unacked bookkeeping
    /// until the visibility timeout hands it to a consumer again (a shutdown
    /// does not restore it). For a message that cannot be settled the way it
    /// should now (its dead-letter queue refuses it, ...): neither lost nor
    /// spun through the queue.
    pub fn abandon(&mut self) {
        self.window.release(self.seq);
        self.left = true;
    }

    /// kombu's delivery tag (a uuid4 set at publish time; the `unacked` key).
    pub fn delivery_tag(&self) -> &str {
        &self.envelope.delivery_tag
    }

    /// The message.
    pub fn message(&self) -> &Message {
        &self.envelope.message
    }

    /// Whether the message was restored or requeued before (kombu sets
    /// `delivery_info.redelivered` and the `redelivered` header).
    pub fn redelivered(&self) -> bool {
        self.envelope.redelivered()
    }

    /// Whether it was acked, rejected or requeued.
    pub fn is_settled(&self) -> bool {
        self.settled.is_some()
    }

    fn check(&self, want: Settled) -> Result<bool, BrokerError> {
        match self.settled {
            None => Ok(false),
            Some(done) if done == want => Ok(true),
            Some(done) => Err(BrokerError::AlreadySettled { tag: self.delivery_tag().to_owned(), how: done.word() }),
        }
    }

    /// Acknowledges the message: it is done and leaves `unacked` (kombu's
    /// `ZREM unacked_index` + `HDEL unacked`).
    pub async fn ack(&mut self) -> Result<(), BrokerError> {
        if self.check(Settled::Acked)? {
            return Ok(());
        }
        self.remove(Settled::Acked).await?;
        self.settled = Some(Settled::Acked);
        Ok(())
    }

    /// Rejects the message without requeueing: dropped, as kombu's
    /// `reject(requeue=False)` does (callers that must not lose it publish it to
    /// a dead-letter queue first).
    pub async fn reject(&mut self) -> Result<(), BrokerError> {
        if self.check(Settled::Rejected)? {
            return Ok(());
        }
        self.remove(Settled::Rejected).await?;
        self.settled = Some(Settled::Rejected);
        Ok(())
    }

    /// Puts the message back at the far end of its queue with `redelivered`
    /// set (kombu's `reject(requeue=True)`: `restore_by_tag(leftmost=True)`, an `LPUSH`).
    pub async fn requeue(&mut self) -> Result<(), BrokerError> {
        if self.check(Settled::Requeued)? {
            return Ok(());
        }
        let held = self.window.held(self.seq).ok_or_else(|| self.handed_back())?;
        self.settler.requeue(&held).await?;
        self.window.release(self.seq);
        self.settled = Some(Settled::Requeued);
        Ok(())
    }

    /// Settles the delivery `how`, and never keeps its prefetch slot: if the
    /// broker stays unreachable (after the transport's own retries), the
    /// settlement is handed to a background retrier and the slot is freed,
    /// so an outage cannot shrink the consumer's window for good. The
    /// message stays in the broker's unacked bookkeeping meanwhile, so
    /// nothing is lost if the retry never succeeds (see [`SettleOutcome`]).
    pub async fn settle(&mut self, how: Settlement) -> SettleOutcome {
        let (result, settled) = match how {
            Settlement::Ack => (self.ack().await, Settled::Acked),
            Settlement::Reject => (self.reject().await, Settled::Rejected),
            Settlement::Requeue => (self.requeue().await, Settled::Requeued),
        };
        let error = match result {
            Ok(()) => return SettleOutcome::Done,
            Err(e) => e,
        };
        if self.settled.is_some() {
            // Settled another way before: nothing of ours to free.
            return SettleOutcome::Failed(error);
        }
        let Some(held) = self.window.held(self.seq) else { return SettleOutcome::Failed(error) };
        let deferred = self.settler.defer(held, how);
        self.window.release(self.seq);
        self.settled = Some(settled);
        if deferred {
            SettleOutcome::Deferred(error)
        } else {
            SettleOutcome::Failed(error)
        }
    }

    /// Tells the broker the message is still being worked on (for ETA tasks held
    /// for long): its `unacked_index` time becomes now, so no visibility sweep
    /// restores it for another `visibility_timeout`.
    pub async fn extend_visibility(&mut self) -> Result<(), BrokerError> {
        extend(&self.settler, &self.window, self.seq, self.settled, || self.delivery_tag().to_owned()).await
    }

    fn handed_back(&self) -> BrokerError {
        BrokerError::AlreadySettled { tag: self.delivery_tag().to_owned(), how: "handed back by restore_unacked" }
    }

    async fn remove(&mut self, how: Settled) -> Result<(), BrokerError> {
        let held = self.window.held(self.seq).ok_or_else(|| self.handed_back())?;
        match how {
            Settled::Rejected => self.settler.reject(&held).await?,
            _ => self.settler.ack(&held).await?,
        }
        self.window.release(self.seq);
        Ok(())
    }
}

impl Delivery {
    /// Packs the delivery for a long wait (an ETA task held for hours): its
    /// envelope is kept as kombu's JSON text, a few times smaller than the
    /// parsed message, and read again by [`ParkedDelivery::unpark`]. The
    /// delivery stays held (prefetch slot, `unacked`) as before. An envelope
    /// whose JSON would not read back the same is kept parsed.
    pub fn park(mut self) -> ParkedDelivery {
        let envelope = match self.envelope.to_json() {
            Ok(json) if Envelope::from_slice(json.as_bytes()).is_ok_and(|back| back == self.envelope) => {
                Packed::Json(Arc::from(json))
            }
            _ => Packed::Parsed(Box::new(std::mem::replace(&mut self.envelope, Envelope::placeholder()))),
        };
        let parked = ParkedDelivery {
            envelope,
            queue: self.window.shared_name(&self.queue),
            settler: self.settler.clone(),
            window: self.window.clone(),
            seq: self.seq,
            settled: self.settled,
            left: self.left,
        };
        // Its bookkeeping lives on in `parked`: this shell must not warn.
        self.left = true;
        parked
    }
}

/// How a parked delivery keeps its envelope.
#[derive(Debug)]
enum Packed {
    /// Shared: the worker rebuilds the request's `inspect` info from it.
    Json(Arc<str>),
    Parsed(Box<Envelope>),
}

/// A [`Delivery`] packed by [`Delivery::park`]: still held, its envelope
/// kept as JSON text. Dropped unsettled, it stays unacked like a delivery.
#[derive(Debug)]
pub struct ParkedDelivery {
    envelope: Packed,
    queue: Arc<str>,
    settler: Settler,
    window: Arc<Window>,
    seq: u64,
    settled: Option<Settled>,
    left: bool,
}

impl ParkedDelivery {
    /// The delivery again, its envelope parsed; the parked delivery back if
    /// its text does not read (never seen: [`Delivery::park`] checks it).
    pub fn unpark(mut self) -> Result<Delivery, ParkedDelivery> {
        let envelope = match std::mem::replace(&mut self.envelope, Packed::Json(Arc::from(""))) {
            Packed::Parsed(envelope) => *envelope,
            Packed::Json(json) => match Envelope::from_slice(json.as_bytes()) {
                Ok(envelope) => envelope,
                Err(e) => {
                    error!("a parked envelope did not read back ({e})");
                    self.envelope = Packed::Json(json);
                    return Err(self);
                }
            },
        };
        let queue = self.queue.to_string();
        let mut delivery = Delivery::new(envelope, queue, self.settler.clone(), self.window.clone(), self.seq);
        delivery.settled = self.settled;
        delivery.left = self.left;
        self.left = true;
        Ok(delivery)
    }

    /// See [`Delivery::abandon`].
    pub fn abandon(&mut self) {
        self.window.release(self.seq);
        self.left = true;
    }

    /// See [`Delivery::leave_unacked`].
    pub fn leave_unacked(&mut self) {
        self.left = true;
    }

    /// See [`Delivery::extend_visibility`].
    pub async fn extend_visibility(&mut self) -> Result<(), BrokerError> {
        extend(&self.settler, &self.window, self.seq, self.settled, || self.delivery_tag()).await
    }

    /// The envelope as kombu's JSON text, shared rather than copied (the
    /// worker reads a held task's `inspect scheduled` info from it instead
    /// of keeping a second copy); `None` for the rare envelope kept parsed.
    pub fn envelope_text(&self) -> Option<Arc<str>> {
        match &self.envelope {
            Packed::Json(text) => Some(text.clone()),
            Packed::Parsed(_) => None,
        }
    }

    /// kombu's delivery tag, as the window holds it.
    pub fn delivery_tag(&self) -> String {
        match &self.envelope {
            Packed::Parsed(envelope) => envelope.delivery_tag.clone(),
            Packed::Json(_) => self.window.held(self.seq).map(|h| h.tag).unwrap_or_default(),
        }
    }
}

impl Drop for ParkedDelivery {
    fn drop(&mut self) {
        if self.settled.is_none() && !self.left && !self.window.is_restoring() && self.window.held(self.seq).is_some() {
            tracing::warn!(
                queue = %self.queue,
                "parked delivery dropped without ack, reject or requeue; it stays unacked until restore_unacked or the visibility timeout"
            );
        }
    }
}

/// `extend_visibility` of a held delivery, parked or not: refused once it
/// was settled or handed back, else the transport's refresh.
async fn extend(
    settler: &Settler,
    window: &Window,
    seq: u64,
    settled: Option<Settled>,
    tag: impl Fn() -> String,
) -> Result<(), BrokerError> {
    if let Some(done) = settled {
        return Err(BrokerError::AlreadySettled { tag: tag(), how: done.word() });
    }
    let held = window
        .held(seq)
        .ok_or_else(|| BrokerError::AlreadySettled { tag: tag(), how: "handed back by restore_unacked" })?;
    settler.extend(window, seq, &held).await
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if self.settled.is_none() && !self.left && !self.window.is_restoring() && self.window.held(self.seq).is_some() {
            tracing::warn!(
                delivery_tag = %self.envelope.delivery_tag,
                queue = %self.queue,
                "delivery dropped without ack, reject or requeue; it stays unacked until restore_unacked or the visibility timeout"
            );
        }
    }
}
