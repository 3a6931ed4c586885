//! Time limits, resolved once per task by a pure function.
//!
//! A limit can come from four places, tried in order: the message
//! (`timelimit` header, `[soft, hard]`), the `time_limit` remote-control
//! command, the task's options, and the worker's settings. The first place
//! that says anything wins, even when what it says is "no limit": Celery's
//! request keeps a message's `0` (not `None`), and billiard treats a falsy
//! timeout as none, so a message's 0 turns a task default off.
//!
//! Numbers from the network are turned into durations here and nowhere else,
//! without any conversion that can panic, with billiard's meaning: a timeout
//! is armed when truthy and fires at `now + timeout`. So `0` is no limit, a
//! negative number fires at once, and NaN, infinities and values beyond any
//! plausible run (a century) never fire.

use std::time::Duration;

/// The longest limit taken literally; beyond it a limit never fires.
const LONGEST: f64 = 100.0 * 365.0 * 24.0 * 3600.0;

/// What one source says about one limit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Limit {
    /// Nothing: ask the next source.
    Unset,
    /// Explicitly no limit.
    Off,
    /// Fires this long after the start.
    After(Duration),
}

impl Limit {
    /// A limit given in seconds by the network or an operator (see the
    /// module docs for the meaning of each kind of number).
    pub(crate) fn from_secs(seconds: Option<f64>) -> Limit {
        let Some(s) = seconds else { return Limit::Unset };
        if s.is_nan() || s == 0.0 || s > LONGEST {
            Limit::Off
        } else if s < 0.0 {
            Limit::After(Duration::ZERO)
        } else {
            Limit::After(Duration::from_secs_f64(s))
        }
    }

    /// A limit from validated settings (`None`: unset).
    pub(crate) fn from_setting(d: Option<Duration>) -> Limit {
        match d {
            None => Limit::Unset,
            Some(d) if d.is_zero() => Limit::Off,
            Some(d) => Limit::After(d),
        }
    }

    fn or(self, next: Limit) -> Limit {
        match self {
            Limit::Unset => next,
            set => set,
        }
    }

    fn duration(self) -> Option<Duration> {
        match self {
            Limit::After(d) => Some(d),
            Limit::Unset | Limit::Off => None,
        }
    }
}

/// A pair of limits from one source.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Pair {
    /// The hard limit: the task is abandoned (`TimeLimitExceeded`).
    pub hard: Limit,
    /// The soft limit: the task is told (`SoftTimeLimitExceeded`).
    pub soft: Limit,
}

impl Pair {
    /// Nothing said.
    #[cfg(test)]
    pub(crate) const UNSET: Pair = Pair { hard: Limit::Unset, soft: Limit::Unset };

    /// From seconds (`None`: unset).
    pub(crate) fn secs(hard: Option<f64>, soft: Option<f64>) -> Pair {
        Pair { hard: Limit::from_secs(hard), soft: Limit::from_secs(soft) }
    }

    /// From validated settings.
    pub(crate) fn settings(hard: Option<Duration>, soft: Option<Duration>) -> Pair {
        Pair { hard: Limit::from_setting(hard), soft: Limit::from_setting(soft) }
    }
}

/// The limits a task runs with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Abandon the task after this long.
    pub hard: Option<Duration>,
    /// Tell the task after this long.
    pub soft: Option<Duration>,
}

/// Resolves the limits from the message, the `time_limit` command, the task
/// and the worker, each limit on its own (see the module docs).
pub(crate) fn resolve(message: Pair, command: Pair, task: Pair, worker: Pair) -> Limits {
    Limits {
        hard: message.hard.or(command.hard).or(task.hard).or(worker.hard).duration(),
        soft: message.soft.or(command.soft).or(task.soft).or(worker.soft).duration(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn every_number_has_a_meaning_and_none_panics() {
        let cases: [(f64, Limit); 12] = [
            (f64::NAN, Limit::Off),
            (f64::INFINITY, Limit::Off),
            (f64::NEG_INFINITY, Limit::After(Duration::ZERO)),
            (1e300, Limit::Off),
            (-1e300, Limit::After(Duration::ZERO)),
            (-1.0, Limit::After(Duration::ZERO)),
            (-0.0, Limit::Off),
            (0.0, Limit::Off),
            (f64::MIN_POSITIVE, Limit::After(Duration::ZERO)),
            (0.25, Limit::After(Duration::from_millis(250))),
            (30.0, Limit::After(S(30))),
            (LONGEST * 2.0, Limit::Off),
        ];
        for (secs, want) in cases {
            assert_eq!(Limit::from_secs(Some(secs)), want, "{secs}");
        }
        assert_eq!(Limit::from_secs(Some(LONGEST)), Limit::After(Duration::from_secs_f64(LONGEST)));
        assert_eq!(Limit::from_secs(None), Limit::Unset);
    }

    #[test]
    fn the_first_source_that_says_anything_wins_per_limit() {
        let worker = Pair::settings(Some(S(100)), Some(S(90)));
        let task = Pair::settings(Some(S(50)), None);
        let command = Pair::secs(None, Some(20.0));
        // message > command > task > worker, hard and soft apart.
        let got = resolve(Pair::secs(Some(5.0), None), command, task, worker);
        assert_eq!(got, Limits { hard: Some(S(5)), soft: Some(S(20)) });
        let got = resolve(Pair::UNSET, command, task, worker);
        assert_eq!(got, Limits { hard: Some(S(50)), soft: Some(S(20)) });
        let got = resolve(Pair::UNSET, Pair::UNSET, task, worker);
        assert_eq!(got, Limits { hard: Some(S(50)), soft: Some(S(90)) });
        let got = resolve(Pair::UNSET, Pair::UNSET, Pair::UNSET, Pair::UNSET);
        assert_eq!(got, Limits::default());
    }

    #[test]
    fn a_message_can_turn_a_default_off_but_never_panics_doing_it() {
        let worker = Pair::settings(Some(S(100)), Some(S(90)));
        // Celery keeps the message's 0, and billiard reads it as no limit.
        let got = resolve(Pair::secs(Some(0.0), Some(f64::NAN)), Pair::UNSET, Pair::UNSET, worker);
        assert_eq!(got, Limits::default());
        let got = resolve(Pair::secs(Some(f64::INFINITY), Some(-5.0)), Pair::UNSET, Pair::UNSET, worker);
        assert_eq!(got, Limits { hard: None, soft: Some(Duration::ZERO) });
        // A zero setting is off too.
        let got = resolve(Pair::UNSET, Pair::UNSET, Pair::settings(Some(Duration::ZERO), None), worker);
        assert_eq!(got, Limits { hard: None, soft: Some(S(90)) });
    }
}
