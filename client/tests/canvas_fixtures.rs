//! The canvases of `tests/fixtures/canvas/` built with celeriac's builder and
//! sent to a private redis-server: every message pushed and every chord key
//! written must be what Celery 5.7 pushed and wrote for the same canvas, byte
//! for byte, in the same order, and the result tree `apply_async` returns the
//! same. Only what is random in both is normalised: the ids neither side pins
//! (numbered by first appearance, so they must stand in the same places),
//! `reply_to`, the delivery tags, `origin` and the clock-derived `expiration`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed assertion

mod support;

use std::time::Duration;

use celeriac_backend::RedisBackend;
use celeriac_client::{chain, chord, group, CanvasResult, Client, Producer, ProducerConfig, Signature};
use celeriac_protocol::time::PyDateTime;
use celeriac_protocol::{json, Map, Value};
use support::{canvas_fixtures, ops_from_commands, ops_from_fixture, IdNumbering, Monitor};

/// The pinned ids of the canvas fixtures: `tid(n, 5)` in capture.py.
const PINNED: &str = "00000005-0000-4000-8000-";

fn t(n: u64) -> String {
    format!("{PINNED}{n:012x}")
}

fn add(x: i64, y: i64) -> Signature {
    Signature::new("tasks.add").args((x, y))
}

fn add1(y: i64) -> Signature {
    Signature::new("tasks.add").args((y,))
}

fn tsum() -> Signature {
    Signature::new("tasks.tsum")
}

fn echo() -> Signature {
    Signature::new("tasks.echo")
}

fn at(iso: &str) -> PyDateTime {
    PyDateTime::parse_iso(iso).unwrap()
}

fn options(pairs: &[(&str, Value)]) -> Map {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect()
}

/// The canvas of each fixture as celeriac builds it, and the options of
/// `apply_async` (what the Python code in the fixture's `python` field does).
fn canvases() -> Vec<(&'static str, Signature, Map)> {
    let none = Map::new;
    vec![
        (
            "canvas_task",
            echo()
                .args((1, "two"))
                .kwarg("flag", true)
                .task_id(t(1))
                .queue("workflow.staging")
                .priority(3)
                .eta(at("2030-01-02T03:04:05.678901+00:00"))
                .expires_at(at("2030-01-02T04:04:05+00:00"))
                .time_limit(Duration::from_secs(30))
                .soft_time_limit(Duration::from_secs_f64(20.5))
                .shadow("echo[nightly]"),
            none(),
        ),
        (
            "canvas_task_ignore_result",
            add(2, 2).task_id(t(2)).ignore_result(true).headers(options(&[("x-tenant", "acme".into())])),
            none(),
        ),
        ("canvas_task_links", add(1, 1).task_id(t(3)).link(add1(10)).link_error(echo().arg("err").si()), none()),
        (
            "canvas_task_link_calls",
            add(2, 3)
                .task_id(t(4))
                .link(add1(10).task_id(t(5)))
                .link(echo().arg("linked").si())
                .link_error(Signature::new("tasks.on_error")),
            none(),
        ),
        (
            "canvas_chain",
            chain([add(1, 2).task_id(t(10)), add1(10).task_id(t(11)), echo().arg("done").si().task_id(t(12))]),
            none(),
        ),
        ("canvas_chain_task_id", chain([add(1, 2).task_id(t(13)), add1(10)]), options(&[("task_id", t(14).into())])),
        ("canvas_chain_pipe", add(1, 1).task_id(t(15)) | add1(2).task_id(t(16)) | add1(3).task_id(t(17)), none()),
        (
            "canvas_chain_links",
            chain([add(1, 1).task_id(t(18)), add1(2).task_id(t(19))])
                .link(echo().task_id(t(20)))
                .link_error(Signature::new("tasks.on_error").task_id(t(21))),
            none(),
        ),
        (
            "canvas_chain_nested",
            chain([add(1, 1).task_id(t(22)), chain([add1(2).task_id(t(23)), add1(3).task_id(t(24))])]),
            none(),
        ),
        ("canvas_group", group([add(1, 1).task_id(t(30)), add(2, 2).task_id(t(31))]).task_id(t(32)), none()),
        (
            "canvas_group_options",
            group([add(1, 1).task_id(t(33)), add(2, 2).task_id(t(34))]),
            options(&[("task_id", t(35).into()), ("queue", "workflow.staging".into()), ("priority", Value::Int(5))]),
        ),
        (
            "canvas_group_chain_member",
            group([chain([add(1, 1).task_id(t(36)), add1(2).task_id(t(37))]), add(5, 5).task_id(t(38))]).task_id(t(39)),
            none(),
        ),
        (
            "canvas_group_nested",
            group([group([add(1, 1).task_id(t(40)), add(2, 2).task_id(t(41))]), add(3, 3).task_id(t(42))])
                .task_id(t(43)),
            none(),
        ),
        (
            "canvas_chord",
            chord([add(1, 1).task_id(t(50)), add(2, 2).task_id(t(51))], tsum().task_id(t(52))).task_id(t(53)),
            none(),
        ),
        (
            "canvas_chord_three",
            chord((0..3).map(|i| add(i, i).task_id(t(44 + i as u64))), tsum().task_id(t(47))),
            options(&[("task_id", t(48).into())]),
        ),
        (
            "canvas_chord_pipe",
            group([add(1, 1).task_id(t(54)), add(2, 2).task_id(t(55))]) | tsum().task_id(t(56)),
            none(),
        ),
        (
            "canvas_chain_group_task",
            chain([
                add(1, 1).task_id(t(60)),
                group([add1(1).task_id(t(61)), add1(2).task_id(t(62))]),
                tsum().task_id(t(63)),
            ]),
            none(),
        ),
        (
            "canvas_chain_group_last",
            chain([add(1, 2).task_id(t(64)), group([add1(3).task_id(t(65)), add1(4).task_id(t(66))]).task_id(t(67))]),
            none(),
        ),
        (
            "canvas_chain_chord_middle",
            chain([
                add(1, 1).task_id(t(70)),
                chord([add1(1).task_id(t(71)), add1(2).task_id(t(72))], tsum().task_id(t(73))),
                add1(100).task_id(t(74)),
            ]),
            none(),
        ),
        (
            "canvas_chord_chain_header",
            chord(
                [chain([add(1, 1).task_id(t(75)), add1(1).task_id(t(76))]), add(5, 5).task_id(t(77))],
                tsum().task_id(t(78)),
            )
            .task_id(t(79)),
            none(),
        ),
        (
            "canvas_chord_chain_body",
            chord(
                [add(1, 1).task_id(t(80)), add(2, 2).task_id(t(81))],
                chain([tsum().task_id(t(82)), add1(10).task_id(t(83))]),
            )
            .task_id(t(84)),
            none(),
        ),
        (
            "canvas_chain_group_first",
            chain([group([add(1, 1).task_id(t(85)), add(2, 2).task_id(t(86))]), tsum().task_id(t(87))]),
            none(),
        ),
        (
            "canvas_group_chord_member",
            group([
                chord([add(1, 1).task_id(t(93)), add(2, 2).task_id(t(94))], tsum().task_id(t(95))).task_id(t(96)),
                add(3, 3).task_id(t(97)),
            ])
            .task_id(t(98)),
            none(),
        ),
        (
            "canvas_chain_stamped",
            chain([add(1, 1).task_id(t(100)), add1(2).task_id(t(101))]).stamp("mystamp", "v1"),
            none(),
        ),
    ]
}

/// The result as capture.py's `describe_result` writes it.
fn describe(result: &CanvasResult) -> Value {
    let mut m = Map::new();
    match result {
        CanvasResult::Task(r) => {
            m.insert("type".into(), "AsyncResult".into());
            m.insert("id".into(), r.id().into());
        }
        CanvasResult::Group(g) => {
            m.insert("type".into(), "GroupResult".into());
            m.insert("id".into(), g.id().into());
            m.insert("results".into(), Value::List(g.results().iter().map(describe).collect()));
        }
    }
    if let Some(parent) = result.parent() {
        m.insert("parent".into(), describe(parent));
    }
    Value::Map(m)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canvases_are_sent_byte_for_byte_as_celery_sends_them() {
    let Some(redis) = celeriac_tests::redis() else { return };
    let fixtures = canvas_fixtures();
    let mut monitor = Monitor::start(redis.port());
    let producer = Producer::new(celeriac_broker::Broker::from_url(&redis.url()).unwrap(), ProducerConfig::default());
    let backend = RedisBackend::from_url(&redis.url()).await.unwrap();
    let client = Client::new(producer, Some(backend));
    let mut con = redis::Client::open(redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap();

    let canvases = canvases();
    assert_eq!(canvases.len(), fixtures.len(), "every canvas fixture has its Rust canvas and no more");
    let mut failures = Vec::new();
    for (name, sig, apply_options) in canvases {
        let fixture = fixtures.get(name).unwrap_or_else(|| panic!("no fixture {name}"));
        monitor.drain();
        let result = client.apply_async_with(&sig, Vec::new(), Map::new(), apply_options).await.unwrap();
        let ours = ops_from_commands(&monitor.drain());
        let theirs = ops_from_fixture(fixture);

        let mut ids = IdNumbering::new(PINNED);
        let theirs: Vec<String> = theirs.iter().map(|l| ids.apply(l)).collect();
        let their_result = ids.apply(&json::to_string(fixture.as_map().unwrap().get("result").unwrap()).unwrap());
        let mut ids = IdNumbering::new(PINNED);
        let ours: Vec<String> = ours.iter().map(|l| ids.apply(l)).collect();
        let our_result = ids.apply(&json::to_string(&describe(&result)).unwrap());

        if ours != theirs {
            failures.push(format!("{name}: operations differ\n  celery:   {theirs:#?}\n  celeriac: {ours:#?}"));
        } else if our_result != their_result {
            failures.push(format!("{name}: results differ\n  celery:   {their_result}\n  celeriac: {our_result}"));
        }
        redis::cmd("FLUSHALL").query_async::<()>(&mut con).await.unwrap();
    }
    assert!(
        failures.is_empty(),
        "{} of {} canvases differ:\n{}",
        failures.len(),
        fixtures.len(),
        failures.join("\n\n")
    );
}

/// The ids of a result tree, the result's first, then up its parents (a
/// group's id, then its members').
fn ids_of(result: &CanvasResult) -> Vec<String> {
    let mut ids = Vec::new();
    let mut at = Some(result);
    while let Some(r) = at {
        ids.push(r.id().to_owned());
        if let Some(g) = r.as_group() {
            ids.extend(g.results().iter().map(|m| m.id().to_owned()));
        }
        at = r.parent();
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freezing_gives_the_ids_applying_sends() {
    let Some(redis) = celeriac_tests::redis() else { return };
    let mut monitor = Monitor::start(redis.port());
    let producer = Producer::new(celeriac_broker::Broker::from_url(&redis.url()).unwrap(), ProducerConfig::default());
    let client = Client::new(producer, Some(RedisBackend::from_url(&redis.url()).await.unwrap()));

    // A chain ending in a group: every id freeze gives is the one sent.
    let mut sig = chain([add(1, 1), add1(2), group([add1(1), add1(2)])]);
    let frozen = client.freeze(&mut sig).unwrap();
    monitor.drain();
    let applied = client.apply_async(&sig).await.unwrap();
    assert_eq!(frozen.to_tuple(), applied.to_tuple(), "apply_async of a frozen canvas returns what freeze did");
    let pushed = ops_from_commands(&monitor.drain()).join("\n");
    let ids = ids_of(&frozen);
    assert_eq!(ids.len(), 5, "{ids:?}");
    for id in ids {
        assert!(pushed.contains(&id), "{id} was not sent:\n{pushed}");
    }

    // A chain with a chord step: Celery 5.7 keeps every task id freeze gave
    // but gives the chord's header group a new id when the chain is applied
    // (its `prepare_steps` re-freezes the chord with a fresh group id), so
    // celeriac does too. Everything else is the same.
    let mut sig = chain([add(1, 1), group([add1(1), add1(2)]), tsum(), add1(10)]);
    let frozen = ids_of(&client.freeze(&mut sig).unwrap());
    monitor.drain();
    let applied = client.apply_async(&sig).await.unwrap();
    let pushed = ops_from_commands(&monitor.drain()).join("\n");
    let applied = ids_of(&applied);
    assert_eq!(frozen.len(), 6, "{frozen:?}");
    assert_eq!(applied.len(), 6, "{applied:?}");
    // [last, chord body, header group, header members..., first]
    for i in [0, 1, 3, 4, 5] {
        assert_eq!(frozen[i], applied[i], "id {i} changed between freeze and apply");
    }
    assert_ne!(frozen[2], applied[2], "the header group's id is new, as in Celery");
    for id in &applied {
        assert!(pushed.contains(id.as_str()), "{id} was not sent:\n{pushed}");
    }
}
