//! Broker transports for celeriac: Redis with kombu's exact keys and ack emulation,
//! AMQP through lapin, and an in-memory broker for unit tests.
//!
//! Nothing lives here yet: the Redis transport is the next piece of work.
