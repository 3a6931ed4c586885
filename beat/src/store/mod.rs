//! Where beat keeps what it must not forget: a local file when it runs alone,
//! or Redis in RedBeat's layout when several beats share the work.

pub mod file;
pub mod redis;

pub use file::FileStore;
pub use redis::{LeaseEvent, Loaded, RedisStore, Sent};

/// The store a beat runs with.
#[derive(Debug)]
pub enum Store {
    /// A local state file; this beat is the only sender.
    File(FileStore),
    /// Redis: dynamic entries, shared state and a leader lease.
    Redis(Box<RedisStore>),
}
