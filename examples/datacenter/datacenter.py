"""The data center's managers as Celery tasks, for celeriac beat to drive.

Each manager used to be its own process looping `poll(); dispatch(); sleep()`.
Here each poll is one task, sent by `celeriac beat` on its own workflow.*
queue (config/examples/data-center.toml), and the dispatched work goes to
`transfer.jobs`:

    trigger-manager   new triggers          -> workflows (queued)
    workflow-manager  queued workflows      -> datacenter.work.process on transfer.jobs
    result-manager    finished workflows    -> results (archived)

The "database" is an SQLite file (DATACENTER_DB, default ./datacenter.sqlite);
each poll also refreshes `health:<manager>` in the broker's Redis, as the old
processes did.

    celery -A datacenter worker -Q workflow.staging,workflow.hpc,workflow.results,transfer.jobs \
        --pool threads -c 4 -E -n python@%h
    celery -A datacenter flower

Broker and results: CELERY_BROKER_URL and CELERY_RESULT_BACKEND.
"""

import json
import os
import random
import socket
import sqlite3
import time
from contextlib import contextmanager
from datetime import datetime, timezone

import redis
from celery import Celery

BROKER = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
BACKEND = os.environ.get("CELERY_RESULT_BACKEND", "redis://127.0.0.1:6379/1")
DB = os.environ.get("DATACENTER_DB", "datacenter.sqlite")

app = Celery("datacenter", broker=BROKER, backend=BACKEND)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    timezone="Europe/Berlin",
    worker_send_task_events=True,
    task_send_sent_event=True,
    result_expires=3600,
    broker_connection_retry_on_startup=True,
    task_routes={"datacenter.work.*": {"queue": "transfer.jobs"}},
)

# health:<manager> beside beat's health:beat and the Rust workers' keys.
_health = redis.Redis.from_url(BROKER)


@contextmanager
def database():
    con = sqlite3.connect(DB, timeout=30)
    try:
        con.execute("PRAGMA journal_mode=WAL")
        con.executescript(
            """
            CREATE TABLE IF NOT EXISTS triggers (id INTEGER PRIMARY KEY, instrument TEXT, status TEXT, at REAL);
            CREATE TABLE IF NOT EXISTS workflows (id INTEGER PRIMARY KEY, trigger_id INTEGER, status TEXT, at REAL);
            CREATE TABLE IF NOT EXISTS results (workflow_id INTEGER PRIMARY KEY, summary TEXT, at REAL);
            """
        )
        yield con
        con.commit()
    finally:
        con.close()


def heartbeat(manager, found, dispatched):
    """What the old manager loops wrote after each round: health:<manager>, 60 s TTL."""
    record = {
        "service": manager,
        "node": f"python@{socket.gethostname()}",
        "pid": os.getpid(),
        "timestamp": datetime.now(timezone.utc).isoformat(),
        "found": found,
        "dispatched": dispatched,
    }
    _health.set(f"health:{manager}", json.dumps(record), ex=60)


@app.task(name="datacenter.managers.trigger")
def poll_triggers():
    """trigger-manager: every new trigger becomes a queued workflow."""
    now = time.time()
    with database() as db:
        new = db.execute("SELECT id FROM triggers WHERE status = 'new'").fetchall()
        for (trigger_id,) in new:
            db.execute("INSERT INTO workflows (trigger_id, status, at) VALUES (?, 'queued', ?)", (trigger_id, now))
            db.execute("UPDATE triggers SET status = 'dispatched' WHERE id = ?", (trigger_id,))
    heartbeat("trigger-manager", len(new), len(new))
    return {"found": len(new), "dispatched": len(new)}


@app.task(name="datacenter.managers.workflow")
def poll_workflows():
    """workflow-manager: queued workflows go to the compute jobs queue.

    Now and then the database is slow: the poll takes longer than its 15 s
    interval, and beat (no_overlap) skips the next slot instead of stacking a
    second poll on top of this one.
    """
    if random.random() < 0.15:
        time.sleep(20)
    with database() as db:
        queued = db.execute("SELECT id FROM workflows WHERE status = 'queued'").fetchall()
        for (workflow_id,) in queued:
            db.execute("UPDATE workflows SET status = 'running' WHERE id = ?", (workflow_id,))
    for (workflow_id,) in queued:
        process.delay(workflow_id)
    heartbeat("workflow-manager", len(queued), len(queued))
    return {"found": len(queued), "dispatched": len(queued)}


@app.task(name="datacenter.managers.result")
def poll_results():
    """result-manager: finished workflows are archived with their results."""
    now = time.time()
    with database() as db:
        done = db.execute("SELECT id FROM workflows WHERE status = 'done'").fetchall()
        for (workflow_id,) in done:
            summary = json.dumps({"workflow": workflow_id, "archived_at": now})
            db.execute("INSERT OR REPLACE INTO results VALUES (?, ?, ?)", (workflow_id, summary, now))
            db.execute("UPDATE workflows SET status = 'archived' WHERE id = ?", (workflow_id,))
    heartbeat("result-manager", len(done), len(done))
    return {"found": len(done), "archived": len(done)}


@app.task(name="datacenter.work.process")
def process(workflow_id):
    """The work a workflow dispatches (a transfer, a calibration): a few seconds."""
    time.sleep(random.uniform(1, 4))
    with database() as db:
        db.execute("UPDATE workflows SET status = 'done' WHERE id = ?", (workflow_id,))
    return workflow_id


@app.task(name="datacenter.reports.nightly")
def nightly_report():
    with database() as db:
        counts = dict(db.execute("SELECT status, COUNT(*) FROM workflows GROUP BY status").fetchall())
    return counts


@app.task(name="datacenter.simulate.instrument_feed")
def instrument_feed():
    """Demo only: instruments write 0-3 new triggers."""
    now = time.time()
    n = random.randint(0, 3)
    with database() as db:
        for _ in range(n):
            instrument = random.choice(["beamline-1", "beamline-2", "microscope", "sequencer"])
            db.execute("INSERT INTO triggers (instrument, status, at) VALUES (?, 'new', ?)", (instrument, now))
    return n
