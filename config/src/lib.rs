//! Settings for celeriac, under Celery's own names (`broker_url`, `result_backend`,
//! `task_routes`, `worker_concurrency`, `beat_schedule`, ...), loaded from TOML and
//! the environment and validated before anything connects.
//!
//! Nothing lives here yet: the settings arrive with the worker and beat.
