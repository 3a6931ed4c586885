"""The golden fixtures (tests/fixtures/) are well formed, cover the wire features, and
pass check_reencoded.py when handed their own envelopes and values (the identity
check): so any failure of celeriac's re-encodings is celeriac's, not the checker's."""

import base64
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

import check_reencoded

HERE = Path(__file__).resolve().parent
FIXTURES = HERE.parent / "fixtures"
MESSAGE_FILES = sorted((FIXTURES / "messages").glob("*.json"))
RESULT_FILES = sorted((FIXTURES / "results").glob("*.json"))

SERIALIZERS = {"json", "msgpack", "yaml", "pickle"}
CONTENT_TYPES = {"json": "application/json", "msgpack": "application/x-msgpack",
                 "yaml": "application/x-yaml", "pickle": "application/x-python-serialize"}
COMPRESSIONS = {"zlib": "application/x-gzip", "bzip2": "application/x-bz2", "lzma": "application/x-lzma",
                "zstd": "application/zstd", "brotli": "application/x-brotli"}
PRIORITY_STEPS = [0, 3, 6, 9]
SEP = "\x06\x16"


def _no_constants(name):
    raise ValueError(f"non-JSON constant {name}")


def plain_json(path: Path):
    """Parse with the plain json module, refusing NaN/Infinity."""
    return json.loads(path.read_text(encoding="ascii"), parse_constant=_no_constants)


def messages():
    return {p.stem: plain_json(p) for p in MESSAGE_FILES}


def results():
    return {p.stem: plain_json(p) for p in RESULT_FILES}


def test_fixture_counts():
    assert len(MESSAGE_FILES) >= 40, f"only {len(MESSAGE_FILES)} message fixtures"
    assert len(RESULT_FILES) >= 10, f"only {len(RESULT_FILES)} result fixtures"


@pytest.mark.parametrize("path", MESSAGE_FILES, ids=lambda p: p.stem)
def test_message_fixture_is_well_formed(path):
    doc = plain_json(path)
    for key in ("name", "description", "celery", "kombu", "protocol", "serializer", "compression",
                "queue_key", "envelope", "decoded"):
        assert key in doc, f"missing {key}"
    assert doc["name"] == path.stem
    assert isinstance(doc["description"], str) and doc["description"] and "\n" not in doc["description"]
    assert doc["celery"] == "5.7.0" and doc["kombu"] == "5.7.0"
    assert doc["protocol"] in (1, 2)
    assert doc["serializer"] in SERIALIZERS
    assert doc["compression"] is None or doc["compression"] in COMPRESSIONS

    env = json.loads(doc["envelope"])
    assert list(env) == ["body", "content-encoding", "content-type", "headers", "properties"]
    props = env["properties"]
    assert props["body_encoding"] == "base64"
    base64.b64decode(env["body"], validate=True)

    decoded = doc["decoded"]
    for key in ("headers", "properties", "delivery_info", "content_type", "content_encoding"):
        assert key in decoded, f"decoded.{key} missing"
    if doc["serializer"] == "pickle":
        assert decoded.get("payload_error") == "pickle refused" and "payload" not in decoded
    else:
        assert "payload" in decoded and "payload_error" not in decoded
    assert decoded["content_type"] == env["content-type"] == CONTENT_TYPES[doc["serializer"]]
    assert decoded["content_encoding"] == env["content-encoding"]
    assert decoded["delivery_info"] == props["delivery_info"]
    assert decoded["properties"]["delivery_tag"] == props["delivery_tag"]
    assert (doc["protocol"] == 2) == ("task" in env["headers"])
    if doc["compression"]:
        assert env["headers"]["compression"] == COMPRESSIONS[doc["compression"]]
    else:
        assert "compression" not in env["headers"]

    # kombu's priority sub-list: <queue>\x06\x16<step> for steps 3, 6, 9
    priority = props["priority"]
    step = max(s for s in PRIORITY_STEPS if s <= min(max(priority, 0), 9))
    queue = doc["queue_key"].split(SEP)[0]
    assert doc["queue_key"] == (queue if step == 0 else f"{queue}{SEP}{step}")
    if props["delivery_info"]["exchange"] == "":
        assert queue == props["delivery_info"]["routing_key"]


@pytest.mark.parametrize("path", RESULT_FILES, ids=lambda p: p.stem)
def test_result_fixture_is_well_formed(path):
    doc = plain_json(path)
    for key in ("name", "description", "key", "value", "python"):
        assert key in doc, f"missing {key}"
    assert doc["name"] == path.stem
    kind = doc.get("kind", "task")
    if kind == "task":
        assert doc["key"].startswith("celery-task-meta-")
        for key in ("status", "result", "traceback"):
            assert key in doc["python"], f"python.{key} missing"
        meta = json.loads(doc["value"])
        assert meta["status"] == doc["python"]["status"]
        assert meta["task_id"] == doc["key"][len("celery-task-meta-"):]
        assert list(meta)[:5] == ["status", "result", "traceback", "children", "date_done"]
        if meta["status"] in ("FAILURE", "RETRY", "REVOKED"):
            assert set(meta["result"]) == {"exc_type", "exc_message", "exc_module"}
            assert doc["python"]["result"] == meta["result"]
    elif kind == "group":
        assert doc["key"].startswith("celery-taskset-meta-")
        assert "result" in json.loads(doc["value"])
    elif kind == "chord_size":
        assert doc["key"].startswith("celery-taskset-meta-") and doc["key"].endswith(".s")
        assert int(doc["value"]) == doc["python"]["chord_size"]
    else:
        pytest.fail(f"unknown kind {kind}")


def test_fixtures_cover_the_wire_features():
    msgs = messages()
    assert {m["serializer"] for m in msgs.values()} == SERIALIZERS
    assert {m["compression"] for m in msgs.values()} - {None} == set(COMPRESSIONS)
    assert sum(m["protocol"] == 1 for m in msgs.values()) >= 3
    assert any(SEP in m["queue_key"] for m in msgs.values()), "no priority sub-list"
    assert any(m["queue_key"].startswith("workflow.staging") for m in msgs.values())
    assert any(m.get("push") == "RPUSH" for m in msgs.values()), "no restored message"
    for name in ("worker_retry", "worker_chain_step_2", "worker_chord_body", "v2_chain",
                 "v2_chord_header_0", "v2_group_0", "v2_large_1mib", "v2_big_integers", "v2_rich_types",
                 "v2_unicode", "v1_plain", "v1_callbacks", "v2_tz_berlin_local_countdown"):
        assert name in msgs, name
    res = results()
    statuses = {r["python"].get("status") for r in res.values()}
    assert {"SUCCESS", "FAILURE", "RETRY", "STARTED", "REVOKED"} <= statuses
    assert {r.get("kind", "task") for r in res.values()} == {"task", "group", "chord_size"}
    assert {r.get("result_extended") for r in res.values()} >= {True, False}


def test_identity_in_process(redis_url):
    """Every fixture's own envelope/value passes the check (in-process run)."""
    out = io.StringIO()
    status = check_reencoded.run(redis_url, {n: m["envelope"] for n, m in messages().items()},
                                 {n: r["value"] for n, r in results().items()}, out=out)
    assert status == 0, out.getvalue()
    assert f"{len(MESSAGE_FILES) + len(RESULT_FILES)} passed, 0 failed" in out.getvalue()


def _cli(redis_url, tmp_path, messages_map, results_map=None):
    mpath = tmp_path / "messages.json"
    mpath.write_text(json.dumps(messages_map))
    argv = [sys.executable, str(HERE / "check_reencoded.py"), "--redis-url", redis_url, "--messages", str(mpath)]
    if results_map is not None:
        rpath = tmp_path / "results.json"
        rpath.write_text(json.dumps(results_map))
        argv += ["--results", str(rpath)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def test_cli_identity(redis_url, tmp_path):
    proc = _cli(redis_url, tmp_path, {n: m["envelope"] for n, m in messages().items()},
                {n: r["value"] for n, r in results().items()})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == len(MESSAGE_FILES) + len(RESULT_FILES) + 1
    assert lines[-1] == f"check_reencoded: {len(lines) - 1} passed, 0 failed"


def test_cli_rejects_empty_and_unknown(redis_url, tmp_path):
    assert _cli(redis_url, tmp_path, {}).returncode == 1
    plain = messages()["v2_plain"]["envelope"]
    assert _cli(redis_url, tmp_path, {"v2_plain": plain}, {}).returncode == 1
    proc = _cli(redis_url, tmp_path, {"v2_plain": plain, "no_such_fixture": plain})
    assert proc.returncode == 1 and "unknown fixture" in proc.stdout
    assert _cli(redis_url, tmp_path, {"v2_plain": plain}).returncode == 0


def _mutate(envelope: str, change) -> str:
    env = json.loads(envelope)
    change(env)
    return json.dumps(env)


def _set_body(env, raw: bytes):
    env["body"] = base64.b64encode(raw).decode()


def test_check_detects_differences(redis_url):
    msgs = messages()
    res = results()
    bad_messages = {
        "v2_plain": _mutate(msgs["v2_plain"]["envelope"], lambda e: e["headers"].update(retries=1)),
        "v2_priority_3": _mutate(msgs["v2_priority_3"]["envelope"], lambda e: e["properties"].update(priority=0)),
        "v2_eta_utc": _mutate(msgs["v2_eta_utc"]["envelope"],
                              lambda e: e["headers"].update(eta=e["headers"]["eta"].replace("+00:00", "Z"))),
        "v2_floats": _mutate(msgs["v2_floats"]["envelope"], lambda e: _set_body(
            e, base64.b64decode(e["body"]).replace(b"-0.0", b"0.0"))),
        "v2_big_integers": _mutate(msgs["v2_big_integers"]["envelope"], lambda e: _set_body(
            e, base64.b64decode(e["body"]).replace(b"18446744073709551617", b"1"))),
        "v2_route_topic_exchange": _mutate(msgs["v2_route_topic_exchange"]["envelope"],
                                           lambda e: e["properties"]["delivery_info"].update(exchange="")),
        "v2_compression_zlib": _mutate(msgs["v2_compression_zlib"]["envelope"], lambda e: e["headers"].pop("compression")),
        "v1_plain": _mutate(msgs["v1_plain"]["envelope"], lambda e: e.update({"content-encoding": "binary"})),
        "v2_msgpack": "not an envelope",
    }
    bad_results = {
        "ext_failure_custom_exception": res["ext_failure_custom_exception"]["value"].replace(
            '"exc_module": "capture"', '"exc_module": "builtins"'),
        "ext_started": res["ext_started"]["value"].replace('"STARTED"', '"PENDING"'),
        "ext_success_datetime": res["ext_success_datetime"]["value"].replace("+00:00", "+01:00"),
    }
    out = io.StringIO()
    assert check_reencoded.run(redis_url, bad_messages, bad_results, out=out) == 1
    text = out.getvalue()
    for name in list(bad_messages) + list(bad_results):
        assert f"FAIL message {name}:" in text or f"FAIL result {name}:" in text, text
    assert f"0 passed, {len(bad_messages) + len(bad_results)} failed" in text
