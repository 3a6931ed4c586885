//! Ready task sets for celeriac workers: the built-ins (ping, health heartbeat), the
//! data center's manager polls and the conformance set of Celery's integration suite.
//!
//! Nothing lives here yet.
