//! Result backends for celeriac: Celery's Redis result store
//! (`celery-task-meta-<id>`), group metadata and the native chord join.
//!
//! Nothing lives here yet: the record formats are in `celeriac-protocol::result`.
