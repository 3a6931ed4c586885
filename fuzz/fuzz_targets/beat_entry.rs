//! Feeds arbitrary bytes to everything a beat entry passes through: RedBeat's
//! hash fields (`definition`, `meta`, `celeriac`, `celeriac_run`, separated by
//! NUL bytes in the input) as any program may write them to Redis, and the
//! same text as a `[beat_schedule.<name>]` table of the TOML file. Whatever is
//! accepted then goes through the scheduler's decision, the next fire times,
//! `--explain`, and the task message beat would send. A decoder may refuse the
//! input; nothing may panic, and what is accepted must survive a round trip
//! through RedBeat's JSON.
#![no_main]

use celeriac_beat::entry::Entry;
use celeriac_beat::redbeat::{self, Keys};
use celeriac_beat::scheduler::{decide, task_id};
use celeriac_beat::{EntryState, Origin};
use celeriac_broker::{Broker, MemoryBroker, Producer, ProducerConfig};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use libfuzzer_sys::fuzz_target;

/// "Now" for the decisions: a fixed instant, so a run is reproducible.
const NOW: i64 = 1_790_000_000;

fn exercise(entry: &Entry, state: &EntryState, app_tz: &TimeZone) {
    let now = Timestamp::from_second(NOW).expect("a valid instant");
    let grace = SignedDuration::from_secs(30);
    let watched = now.checked_sub(SignedDuration::from_hours(1)).ok();
    for at in [now, state.last_run_at.and_then(|t| t.checked_add(SignedDuration::from_hours(25)).ok()).unwrap_or(now)] {
        let d = decide(entry, state, at, grace, watched);
        for pair in d.sends.windows(2) {
            assert!(pair[0] < pair[1], "sends out of order: {:?}", d.sends);
        }
        if let Some(next) = d.next {
            assert!(d.latest.is_none_or(|l| next > l), "next {next} is not after the latest slot {:?}", d.latest);
        }
    }
    // Fire times only move forward.
    let mut last = state.last_run_at;
    for _ in 0..5 {
        match entry.schedule.next_after(last, &entry.tz) {
            Some(next) => {
                assert!(last.is_none_or(|l| next > l), "{next} after {last:?}");
                last = Some(next);
            }
            None => break,
        }
    }
    let _ = celeriac_beat::explain::explain(&[(entry.clone(), Some(state.clone()))], now, 3);
    let _ = entry.fingerprint();
    // The message beat would send.
    let producer = Producer::new(Broker::Memory(MemoryBroker::default()), ProducerConfig::default());
    let mut options = entry.send.clone();
    options.task_id = Some(task_id("redbeat:", &entry.name, now));
    let _ = producer.build(&entry.task, entry.arg_values(), entry.kwarg_values(), &options, now);
    // RedBeat's JSON of the entry reads back as the same entry.
    let keys = Keys::new("redbeat:", "redbeat::lock");
    let definition = redbeat::definition_json(entry).to_string();
    let extras = serde_json::to_string(&entry.extras).expect("extras encode");
    let (again, _) = redbeat::entry_from_hash(
        &keys.entry(&entry.name),
        &keys,
        &definition,
        Some(&extras),
        entry.origin,
        app_tz,
        Some(30.0),
    )
    .unwrap_or_else(|e| panic!("celeriac's own definition {definition} does not read back: {e}"));
    assert_eq!(again.fingerprint(), entry.fingerprint(), "{definition}");
    let meta = state.meta_json();
    let (last_run_at, count) = redbeat::meta_from_json(Some(&meta)).expect("celeriac's own meta reads back");
    assert_eq!((last_run_at, count), (state.last_run_at, state.total_run_count), "{meta}");
}

fuzz_target!(|data: &[u8]| {
    let mut fields = data.split(|b| *b == 0).map(|f| std::str::from_utf8(f).ok());
    let definition = fields.next().flatten();
    let meta = fields.next().flatten();
    let extras = fields.next().flatten();
    let run = fields.next().flatten();
    let keys = Keys::new("redbeat:", "redbeat::lock");
    let tz = TimeZone::get("Europe/Berlin").unwrap_or(TimeZone::UTC);
    let state = EntryState::from_fields(meta, run);
    if let Some(definition) = definition {
        let entry =
            redbeat::entry_from_hash("redbeat:fuzz", &keys, definition, extras, Origin::Dynamic, &tz, Some(30.0));
        if let Ok((entry, _)) = &entry {
            exercise(entry, state.as_ref().map_or(&EntryState::default(), |s| s), &tz);
        }
        // The same text as the TOML file's entry.
        let toml = format!("[beat_schedule.fuzz]\n{definition}");
        if let Ok(loaded) = celeriac_config::load_from_str(&toml, "fuzz", Vec::new()) {
            if let Some(s) = loaded.settings.beat_schedule.get("fuzz") {
                if let Ok(entry) = Entry::from_settings("fuzz", s, &tz, Some(30.0)) {
                    exercise(&entry, &EntryState::default(), &tz);
                }
            }
        }
    }
});
