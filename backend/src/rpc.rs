//! The `rpc://` result backend as Celery's `RPCBackend`: a worker sends each
//! task's record as a message to the queue named by the task's `reply_to`
//! (the client's oid queue) through the default exchange, `correlation_id` =
//! the task id, delivery mode 1, headers empty; the body is the same record
//! the Redis backend stores (`{"status", "result", "traceback", "children",
//! "date_done", "task_id"}`), in `result_serializer`. Python clients with
//! `result_backend = "rpc://"` read it with `AsyncResult.get()`.
//!
//! Results are messages, not stored state: a task whose `reply_to` is not
//! known (it was not received through this broker's consumers, or was sent
//! without one) has nowhere to go, and its result is dropped with a debug
//! line, as Celery's RPC backend does for a missing reply queue.

use celeriac_broker::AmqpBroker;
use celeriac_protocol::result::ResultMeta;
use celeriac_protocol::{Map, Message, Value};

use crate::error::BackendError;
use crate::payload::PayloadCodec;

/// The `rpc://` backend on the worker's AMQP broker (see the module docs).
#[derive(Clone, Debug)]
pub struct RpcBackend {
    broker: AmqpBroker,
    codec: PayloadCodec,
    extended: bool,
}

/// Whether `url` names the RPC backend (`rpc://`, with or without more).
pub fn is_rpc_url(url: &str) -> bool {
    url.starts_with("rpc://") || url == "rpc"
}

impl RpcBackend {
    /// Results sent over `broker`, encoded with `codec`; with `extended`, the
    /// `result_extended` fields are kept.
    pub fn new(broker: AmqpBroker, codec: PayloadCodec, extended: bool) -> RpcBackend {
        RpcBackend { broker, codec, extended }
    }

    /// Sends `meta` to its task's `reply_to` queue; `false` when the task's
    /// reply queue is not known (nothing is sent).
    pub async fn store(&self, meta: &ResultMeta) -> Result<bool, BackendError> {
        let Some(reply_to) = self.broker.reply_to(&meta.task_id) else {
            tracing::debug!(task_id = %meta.task_id, "rpc:// backend: the task has no reply_to; result not sent");
            return Ok(false);
        };
        let meta = crate::backend::prepare_record(meta, self.extended);
        let body = self.codec.encode(&meta.to_value()).map_err(|source| BackendError::Encode {
            key: meta.task_id.clone(),
            serializer: self.codec.serializer.serializer_name(),
            source,
        })?;
        let mut properties = Map::new();
        properties.insert("correlation_id".into(), Value::Str(meta.task_id.clone()));
        properties.insert("delivery_mode".into(), Value::Int(1));
        let message = Message {
            headers: Map::new(),
            properties,
            priority: 0,
            content_type: self.codec.serializer.mime().to_owned(),
            content_encoding: self.codec.serializer.encoding().to_owned(),
            body,
        };
        self.broker.publish("", &reply_to, &message).await.map_err(|e| BackendError::Rpc(e.to_string()))?;
        tracing::debug!(task_id = %meta.task_id, reply_to = %reply_to, state = %meta.status, "sent result");
        Ok(true)
    }
}
