//! Redis key and channel names, exactly as kombu's Redis transport builds them.
//!
//! - a queue is a list named after it; priority sub-queues append
//!   `sep + step` (`celery\x06\x163`), step 0 has no suffix;
//! - bindings are the sets `_kombu.binding.<exchange>` (and, since kombu 5.7,
//!   `_kombu.binding_permanent.<exchange>`) with members
//!   `<routing_key>\x06\x16<pattern>\x06\x16<queue>`;
//! - ack emulation uses `unacked` (hash), `unacked_index` (sorted set) and
//!   `unacked_mutex`;
//! - fanout exchanges are PUB/SUB channels `/{db}.<exchange>[/<routing_key>]`.
//!
//! `global_keyprefix` is prepended as is to every one of these, as kombu's
//! `PrefixedStrictRedis` does for the commands it uses.

use crate::options::RedisOptions;

/// kombu's lowest and highest message priority (`min_priority`, `max_priority`).
pub const MAX_PRIORITY: u8 = 9;

/// The names of everything the transport keeps in Redis.
#[derive(Clone, Debug)]
pub struct KeySpace {
    prefix: String,
    sep: String,
    steps: Vec<u8>,
    fanout_prefix: String,
    fanout_patterns: bool,
    unacked: String,
    unacked_index: String,
    unacked_mutex: String,
}

impl KeySpace {
    /// The key space of `options`.
    pub fn new(options: &RedisOptions) -> KeySpace {
        KeySpace {
            prefix: options.global_keyprefix.clone(),
            sep: options.sep.clone(),
            steps: options.priority_steps.clone(),
            fanout_prefix: options.fanout_prefix_str(),
            fanout_patterns: options.fanout_patterns,
            unacked: format!("{}{}", options.global_keyprefix, options.unacked_key),
            unacked_index: format!("{}{}", options.global_keyprefix, options.unacked_index_key),
            unacked_mutex: format!("{}{}", options.global_keyprefix, options.unacked_mutex_key),
        }
    }

    /// The global key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The separator of priority suffixes and binding members.
    pub fn sep(&self) -> &str {
        &self.sep
    }

    /// The priority steps, in the configured order (the order of `BRPOP` keys).
    pub fn steps(&self) -> &[u8] {
        &self.steps
    }

    /// The step a message priority goes to: the priority is clamped to 0..=9
    /// (`_get_message_priority`), then `steps[bisect_right(steps, p) - 1]`
    /// (`Channel.priority`), which is the last step when `p` is below the first.
    pub fn priority_step(&self, priority: u8) -> u8 {
        let p = priority.min(MAX_PRIORITY);
        let idx = self.steps.partition_point(|s| *s <= p);
        match idx.checked_sub(1) {
            Some(i) => self.steps[i],
            None => self.steps.last().copied().unwrap_or(0),
        }
    }

    /// The suffix a step adds to a queue name (`""` for step 0).
    pub fn step_suffix(&self, step: u8) -> String {
        if step == 0 {
            String::new()
        } else {
            format!("{}{step}", self.sep)
        }
    }

    /// The list a message with `priority` published to `queue` goes to, prefixed.
    pub fn queue_key_for_priority(&self, queue: &str, priority: u8) -> String {
        self.queue_key(queue, self.priority_step(priority))
    }

    /// The list of `queue` at `step` (`_q_for_pri`), prefixed.
    pub fn queue_key(&self, queue: &str, step: u8) -> String {
        format!("{}{}{}", self.prefix, queue, self.step_suffix(step))
    }

    /// The lists of `queue`, one per step, in step order, prefixed.
    pub fn queue_keys(&self, queue: &str) -> Vec<String> {
        self.steps.iter().map(|s| self.queue_key(queue, *s)).collect()
    }

    /// `_kombu.binding.<exchange>`, prefixed.
    pub fn binding_key(&self, exchange: &str) -> String {
        format!("{}_kombu.binding.{exchange}", self.prefix)
    }

    /// `_kombu.binding_permanent.<exchange>` (kombu 5.7: bindings of queues
    /// without `x-expires`), prefixed.
    pub fn binding_permanent_key(&self, exchange: &str) -> String {
        format!("{}_kombu.binding_permanent.{exchange}", self.prefix)
    }

    /// A binding member: `<routing_key>sep<pattern>sep<queue>`.
    pub fn binding_member(&self, routing_key: &str, pattern: &str, queue: &str) -> String {
        [routing_key, pattern, queue].join(&self.sep)
    }

    /// Splits a binding member into `(routing_key, pattern, queue)`; `None`
    /// unless it has exactly three parts (kombu could not unpack it either).
    pub fn parse_binding_member<'a>(&self, member: &'a str) -> Option<(&'a str, &'a str, &'a str)> {
        let mut parts = member.split(self.sep.as_str());
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(rk), Some(pattern), Some(queue), None) => Some((rk, pattern, queue)),
            _ => None,
        }
    }

    /// The hash of unacked messages, prefixed.
    pub fn unacked(&self) -> &str {
        &self.unacked
    }

    /// The sorted set of delivery times, prefixed.
    pub fn unacked_index(&self) -> &str {
        &self.unacked_index
    }

    /// The visibility sweep's lock, prefixed.
    pub fn unacked_mutex(&self) -> &str {
        &self.unacked_mutex
    }

    /// The channel a fanout message is published on (`_get_publish_topic`),
    /// without the global prefix: `/{db}.<exchange>/<routing_key>`, or
    /// `/{db}.<exchange>` when the routing key is empty or `fanout_patterns` is off.
    pub fn fanout_topic(&self, exchange: &str, routing_key: &str) -> String {
        if !routing_key.is_empty() && self.fanout_patterns {
            format!("{}{exchange}/{routing_key}", self.fanout_prefix)
        } else {
            format!("{}{exchange}", self.fanout_prefix)
        }
    }

    /// The channel to `PUBLISH` on, prefixed.
    pub fn fanout_publish_channel(&self, exchange: &str, routing_key: &str) -> String {
        format!("{}{}", self.prefix, self.fanout_topic(exchange, routing_key))
    }

    /// The pattern to `PSUBSCRIBE` for a binding of `exchange` with
    /// `binding_key` (`#` becomes `*`, as in `_queue_bind`), prefixed.
    pub fn fanout_subscribe_pattern(&self, exchange: &str, binding_key: &str) -> String {
        format!("{}{}", self.prefix, self.fanout_topic(exchange, &binding_key.replace('#', "*")))
    }

    /// Reads a received channel name as kombu's `_receive_one` does: strips the
    /// global prefix, then a leading `/<db>.`, and splits `exchange[/routing_key]`.
    pub fn parse_fanout_channel<'a>(&self, channel: &'a str) -> (&'a str, Option<&'a str>) {
        let mut rest = channel.strip_prefix(self.prefix.as_str()).unwrap_or(channel);
        if rest.starts_with('/') {
            rest = rest.split_once('.').map_or("", |(_, r)| r);
        }
        match rest.split_once('/') {
            Some((exchange, rk)) => (exchange, Some(rk)),
            None => (rest, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::FanoutPrefix;

    fn keys(prefix: &str) -> KeySpace {
        KeySpace::new(&RedisOptions { global_keyprefix: prefix.into(), ..RedisOptions::default() })
    }

    #[test]
    fn priority_steps_map_as_kombu() {
        let k = keys("");
        let got: Vec<u8> = (0..=12).map(|p| k.priority_step(p)).collect();
        assert_eq!(got, vec![0, 0, 0, 3, 3, 3, 6, 6, 6, 9, 9, 9, 9]);
        assert_eq!(k.queue_key_for_priority("celery", 0), "celery");
        assert_eq!(k.queue_key_for_priority("other", 5), "other\x06\x163");
        assert_eq!(k.queue_key_for_priority("celery", 9), "celery\x06\x169");
        assert_eq!(k.queue_keys("q"), vec!["q", "q\x06\x163", "q\x06\x166", "q\x06\x169"]);
    }

    #[test]
    fn steps_not_starting_at_zero_wrap_like_bisect() {
        let k = KeySpace::new(&RedisOptions { priority_steps: vec![2, 5], ..RedisOptions::default() });
        // bisect([2, 5], 0) - 1 == -1, and steps[-1] is the last step in Python.
        assert_eq!(k.priority_step(0), 5);
        assert_eq!(k.priority_step(2), 2);
        assert_eq!(k.priority_step(7), 5);
        assert_eq!(k.queue_key("q", 2), "q\x06\x162");
    }

    #[test]
    fn binding_member_format() {
        let k = keys("");
        assert_eq!(k.binding_key("celery"), "_kombu.binding.celery");
        assert_eq!(k.binding_permanent_key("celery"), "_kombu.binding_permanent.celery");
        assert_eq!(k.binding_member("celery", "", "celery"), "celery\x06\x16\x06\x16celery");
        assert_eq!(k.binding_member("", "", "w1@vm.celery.pidbox"), "\x06\x16\x06\x16w1@vm.celery.pidbox");
        assert_eq!(
            k.parse_binding_member("worker.#\x06\x16^worker\\..*?$\x06\x16celeryev.x"),
            Some(("worker.#", "^worker\\..*?$", "celeryev.x"))
        );
        assert_eq!(k.parse_binding_member("a\x06\x16b"), None);
        assert_eq!(k.parse_binding_member("a\x06\x16b\x06\x16c\x06\x16d"), None);
    }

    #[test]
    fn global_prefix_goes_everywhere_kombu_puts_it() {
        let k = keys("pfx:");
        assert_eq!(k.queue_key("celery", 3), "pfx:celery\x06\x163");
        assert_eq!(k.binding_key("celery"), "pfx:_kombu.binding.celery");
        assert_eq!(k.unacked(), "pfx:unacked");
        assert_eq!(k.unacked_index(), "pfx:unacked_index");
        assert_eq!(k.unacked_mutex(), "pfx:unacked_mutex");
        assert_eq!(k.fanout_publish_channel("celeryev", "worker.heartbeat"), "pfx:/0.celeryev/worker.heartbeat");
        assert_eq!(k.fanout_subscribe_pattern("celeryev", "worker.#"), "pfx:/0.celeryev/worker.*");
        assert_eq!(k.parse_fanout_channel("pfx:/0.celeryev/worker.heartbeat"), ("celeryev", Some("worker.heartbeat")));
    }

    #[test]
    fn fanout_channels() {
        let k = keys("");
        assert_eq!(k.fanout_publish_channel("celery.pidbox", ""), "/0.celery.pidbox");
        assert_eq!(k.fanout_subscribe_pattern("celeryev", "#"), "/0.celeryev/*");
        assert_eq!(k.parse_fanout_channel("/0.celery.pidbox"), ("celery.pidbox", None));
        let k = KeySpace::new(&RedisOptions {
            fanout_patterns: false,
            fanout_prefix: FanoutPrefix::Disabled,
            ..RedisOptions::default()
        });
        assert_eq!(k.fanout_publish_channel("celeryev", "task.sent"), "celeryev");
        assert_eq!(k.parse_fanout_channel("celeryev"), ("celeryev", None));
    }
}
