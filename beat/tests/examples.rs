//! The example configuration stays valid: every entry of
//! `config/examples/data-center.toml` builds, and the three manager polls are
//! on workflow.* queues with no-overlap and an expiry within their interval.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed assertion

use celeriac_beat::schedule::Schedule;
use celeriac_beat::Entry;
use jiff::tz::TimeZone;

#[test]
fn the_data_center_example_builds() {
    let path = celeriac_tests::repo_root().join("config/examples/data-center.toml");
    let settings =
        celeriac_config::load_from_str(&std::fs::read_to_string(&path).unwrap(), " in data-center.toml", Vec::new())
            .unwrap()
            .settings;
    let tz = TimeZone::get(settings.timezone.as_deref().unwrap()).unwrap();
    let entries: Vec<Entry> = settings
        .beat_schedule
        .iter()
        .map(|(name, e)| Entry::from_settings(name, e, &tz, settings.beat_cron_starting_deadline).unwrap())
        .collect();
    for manager in ["trigger-manager", "workflow-manager", "result-manager"] {
        let e = entries.iter().find(|e| e.name == manager).unwrap();
        assert!(e.extras.no_overlap, "{manager}");
        assert!(e.send.queue.as_deref().unwrap().starts_with("workflow."), "{manager}");
        let Schedule::Interval(every) = &e.schedule else { panic!("{manager} is not an interval") };
        let expires = e.options["expires"].as_f64().unwrap();
        assert!(expires <= every.every.as_secs_f64(), "{manager}: a poll outliving its interval piles up");
    }
    assert!(settings.redbeat_redis_url.is_some() && settings.result_backend.is_some());
}
