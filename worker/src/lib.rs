//! The celeriac worker runtime: the task API (handlers with `Args`, `Kwargs` and
//! `Ctx` extractors), the registry, the consumer loop, the executor, events and
//! remote control.
//!
//! Nothing lives here yet.
