//! The delivery tags of one consumer channel, and which acks may go out
//! together as one `basic.ack(multiple=true)`.
//!
//! RabbitMQ numbers a channel's deliveries 1, 2, 3, ... and
//! `basic.ack(tag, multiple=true)` settles *every* unacked delivery of that
//! channel up to `tag`. So acks that are ready together are sent as one
//! multiple ack only when no lower tag of the channel is still running,
//! being rejected or requeued, or not even seen yet (a delivery of another
//! consumer of the same channel still in lapin's buffers). The other ready
//! acks go out one by one (`multiple=false`), and a reject or requeue is
//! always exactly one `basic.reject` of its own tag, which keeps its tag
//! counted as unsettled until the frame is out, so no multiple ack planned
//! meanwhile can cover it.

use std::collections::{BTreeMap, BTreeSet};

/// One ack frame to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AckFrame {
    /// `basic.ack(tag, multiple=false)`.
    Single(u64),
    /// `basic.ack(tag, multiple=true)`: this tag and every lower one still unacked.
    Multiple(u64),
}

impl AckFrame {
    /// The tag the frame names.
    pub fn tag(self) -> u64 {
        match self {
            AckFrame::Single(t) | AckFrame::Multiple(t) => t,
        }
    }
}

/// Why a tag cannot be settled through the book.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NotOpen {
    /// Never delivered on this channel, or settled already (or being settled).
    Unknown,
}

/// The bookkeeping of one channel (see the module docs). `W` is what waits
/// for an ack to be sent (a oneshot sender in the settler, a number in tests).
#[derive(Debug)]
pub(crate) struct AckBook<W> {
    /// Every tag from 1 to this one has been seen.
    seen_upto: u64,
    /// Tags seen above a gap (deliveries of several consumers can be read out of order).
    seen_above: BTreeSet<u64>,
    /// Seen, and no settle frame sent yet (running, ack ready, or being rejected).
    unsettled: BTreeSet<u64>,
    /// Acks asked for and not sent yet, with who waits for them.
    pending: BTreeMap<u64, W>,
    /// Being rejected or requeued (their frame not out yet).
    rejecting: BTreeSet<u64>,
}

impl<W> Default for AckBook<W> {
    fn default() -> Self {
        AckBook {
            seen_upto: 0,
            seen_above: BTreeSet::new(),
            unsettled: BTreeSet::new(),
            pending: BTreeMap::new(),
            rejecting: BTreeSet::new(),
        }
    }
}

impl<W> AckBook<W> {
    /// Records a delivery of the channel: unsettled until acked or rejected.
    pub fn seen(&mut self, tag: u64) {
        if tag == 0 || tag <= self.seen_upto {
            return;
        }
        self.unsettled.insert(tag);
        if tag == self.seen_upto + 1 {
            self.seen_upto = tag;
            while self.seen_above.remove(&(self.seen_upto + 1)) {
                self.seen_upto += 1;
            }
        } else {
            self.seen_above.insert(tag);
        }
    }

    /// Asks for `tag` to be acked; `waiter` is handed back by [`AckBook::plan`].
    pub fn request_ack(&mut self, tag: u64, waiter: W) -> Result<(), NotOpen> {
        if !self.unsettled.contains(&tag) || self.pending.contains_key(&tag) || self.rejecting.contains(&tag) {
            return Err(NotOpen::Unknown);
        }
        self.pending.insert(tag, waiter);
        Ok(())
    }

    /// A reject or requeue of `tag` begins: it stays unsettled (no multiple
    /// ack may cover it) until [`AckBook::finish_other`].
    pub fn begin_other(&mut self, tag: u64) -> Result<(), NotOpen> {
        if !self.unsettled.contains(&tag) || self.pending.contains_key(&tag) || !self.rejecting.insert(tag) {
            return Err(NotOpen::Unknown);
        }
        Ok(())
    }

    /// The reject or requeue frame of `tag` is out.
    pub fn finish_other(&mut self, tag: u64) {
        self.rejecting.remove(&tag);
        self.unsettled.remove(&tag);
    }

    /// Deliveries seen and not settled.
    #[cfg(test)]
    pub fn unsettled(&self) -> usize {
        self.unsettled.len()
    }

    /// Takes every pending ack and says how to send them: one multiple ack
    /// for those no running, rejecting or unseen lower tag separates from the
    /// start of the channel, single acks for the rest. Their tags count as
    /// settled from now on (the frames are sent in this order, before any
    /// later plan's).
    pub fn plan(&mut self) -> Vec<(AckFrame, Vec<W>)> {
        if self.pending.is_empty() {
            return Vec::new();
        }
        // The lowest tag still open and not being acked now.
        let running = self.unsettled.iter().find(|t| !self.pending.contains_key(t)).copied();
        let limit = running.map_or(self.seen_upto, |r| (r - 1).min(self.seen_upto));
        let pending = std::mem::take(&mut self.pending);
        let mut frames = Vec::new();
        let mut batch: Vec<W> = Vec::new();
        let mut top = 0;
        for (tag, waiter) in pending {
            self.unsettled.remove(&tag);
            if tag <= limit {
                top = tag;
                batch.push(waiter);
            } else {
                frames.push((AckFrame::Single(tag), vec![waiter]));
            }
        }
        match batch.len() {
            0 => {}
            1 => frames.insert(0, (AckFrame::Single(top), batch)),
            _ => frames.insert(0, (AckFrame::Multiple(top), batch)),
        }
        frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the broker would consider acked after `frames`, given the
    /// tags it delivered and the ones it saw settled before.
    fn broker_acks(delivered: u64, settled_before: &BTreeSet<u64>, frames: &[AckFrame]) -> BTreeSet<u64> {
        let mut acked = BTreeSet::new();
        for f in frames {
            match *f {
                AckFrame::Single(t) => {
                    assert!(!settled_before.contains(&t) && acked.insert(t), "tag {t} acked twice");
                }
                AckFrame::Multiple(t) => {
                    for u in 1..=t.min(delivered) {
                        if !settled_before.contains(&u) {
                            acked.insert(u);
                        }
                    }
                }
            }
        }
        acked
    }

    #[test]
    fn a_run_from_the_start_is_one_multiple_ack() {
        let mut b = AckBook::default();
        for t in 1..=5 {
            b.seen(t);
        }
        for t in [3, 1, 2] {
            b.request_ack(t, t).unwrap();
        }
        let plan = b.plan();
        assert_eq!(plan.len(), 1);
        assert_eq!(plan[0].0, AckFrame::Multiple(3));
        assert_eq!(plan[0].1, vec![1, 2, 3]);
        assert_eq!(b.unsettled(), 2);
        // 5 is ready but 4 still runs: a single ack for 5 only.
        b.request_ack(5, 5).unwrap();
        assert_eq!(b.plan().into_iter().map(|p| p.0).collect::<Vec<_>>(), [AckFrame::Single(5)]);
        b.request_ack(4, 4).unwrap();
        assert_eq!(b.plan().into_iter().map(|p| p.0).collect::<Vec<_>>(), [AckFrame::Single(4)]);
        assert_eq!(b.unsettled(), 0);
    }

    #[test]
    fn a_running_lower_tag_keeps_acks_single() {
        let mut b = AckBook::default();
        for t in 1..=6 {
            b.seen(t);
        }
        for t in [2, 3, 5, 6] {
            b.request_ack(t, t).unwrap();
        }
        let frames: Vec<_> = b.plan().into_iter().map(|p| p.0).collect();
        assert_eq!(frames, [AckFrame::Single(2), AckFrame::Single(3), AckFrame::Single(5), AckFrame::Single(6)]);
        // 1 and 4 done now: 1 is the lowest open tag, so a multiple ack up to 4 is right.
        b.request_ack(4, 4).unwrap();
        b.request_ack(1, 1).unwrap();
        let frames: Vec<_> = b.plan().into_iter().map(|p| p.0).collect();
        assert_eq!(frames, [AckFrame::Multiple(4)]);
    }

    #[test]
    fn a_reject_in_flight_or_an_unseen_tag_stops_the_run() {
        let mut b = AckBook::default();
        for t in [1, 2, 4] {
            b.seen(t); // 3 not seen yet (another consumer's delivery still buffered)
        }
        b.begin_other(1).unwrap();
        b.request_ack(2, 2).unwrap();
        b.request_ack(4, 4).unwrap();
        let frames: Vec<_> = b.plan().into_iter().map(|p| p.0).collect();
        assert_eq!(frames, [AckFrame::Single(2), AckFrame::Single(4)]);
        assert_eq!(b.request_ack(1, 1), Err(NotOpen::Unknown), "being rejected: no ack too");
        assert_eq!(b.begin_other(1), Err(NotOpen::Unknown), "one reject per tag");
        b.finish_other(1);
        b.seen(3);
        b.seen(5);
        b.request_ack(3, 3).unwrap();
        b.request_ack(5, 5).unwrap();
        let frames: Vec<_> = b.plan().into_iter().map(|p| p.0).collect();
        assert_eq!(frames, [AckFrame::Multiple(5)]);
        assert_eq!(b.request_ack(5, 5), Err(NotOpen::Unknown), "acked already");
        assert_eq!(b.request_ack(9, 9), Err(NotOpen::Unknown), "never delivered");
    }

    /// Random finishing orders with rejects mixed in: the frames settle
    /// exactly the acked tags, never a running or rejected one.
    #[test]
    fn out_of_order_settling_acks_exactly_what_was_acked() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..300 {
            let n = 1 + next() % 40;
            let mut book = AckBook::default();
            let mut order: Vec<u64> = (1..=n).collect();
            for i in (1..order.len()).rev() {
                order.swap(i, (next() % (i as u64 + 1)) as usize);
            }
            let (mut want, mut rejected) = (BTreeSet::new(), BTreeSet::new());
            let mut frames = Vec::new();
            let mut delivered = 0;
            for &t in &order {
                // Deliveries arrive in order, ahead of the finishing ones.
                while delivered < n && (delivered < t || next() % 2 == 0) {
                    delivered += 1;
                    book.seen(delivered);
                }
                if next() % 5 == 0 {
                    book.begin_other(t).unwrap();
                    // Frames planned before are sent before the reject.
                    let acked_now = broker_acks(delivered, &rejected, &frames);
                    assert!(!acked_now.contains(&t), "tag {t} acked before its reject");
                    book.finish_other(t);
                    rejected.insert(t);
                } else {
                    book.request_ack(t, t).unwrap();
                    want.insert(t);
                }
                if next() % 3 == 0 {
                    frames.extend(book.plan().into_iter().map(|p| p.0));
                }
                let acked = broker_acks(delivered, &rejected, &frames);
                assert!(acked.is_subset(&want), "acked {acked:?}, only {want:?} were done");
            }
            frames.extend(book.plan().into_iter().map(|p| p.0));
            assert_eq!(broker_acks(delivered, &rejected, &frames), want);
            assert_eq!(book.unsettled(), 0);
        }
    }
}
