//! celeriac's client side: build canvases (chain, group, chord) and send
//! them exactly as Celery 5.7 does, and read results, without compiling the
//! worker.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use celeriac_client::{chord, Client, Signature};
//!
//! let client = Client::from_urls("redis://127.0.0.1:6379/0", Some("redis://127.0.0.1:6379/1")).await?;
//! let add = |x: i64, y: i64| Signature::new("tasks.add").args((x, y));
//! let result = client.apply_async(&chord([add(1, 1), add(2, 2)], Signature::new("tasks.tsum"))).await?;
//! assert_eq!(result.get(Some(std::time::Duration::from_secs(30))).await?, 6.into());
//! # Ok(()) }
//! ```
//!
//! The workflow of the README's "Canvas" section: a chain whose group and
//! last task become a chord, with an errback, and a group read in order.
//!
//! ```no_run
//! # async fn demo(client: celeriac_client::Client, files: Vec<String>) -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use celeriac_client::{chain, group, Signature};
//!
//! let stage = |p: &str| Signature::new("workflow.stage").arg(p);
//! let hpc = |d: &str| Signature::new("workflow.hpc").kwarg("detector", d);
//! let report = Signature::new("workflow.report");
//!
//! let flow = chain([stage("/data/run42"), group(["d1", "d2", "d3"].map(hpc)), report.queue("reports")])
//!     .link_error(Signature::new("workflow.alert").arg("run42").si());
//! let res = client.apply_async(&flow).await?;
//! println!("{:?}", res.get(Some(Duration::from_secs(600))).await?);
//! if let Some(header) = res.parent() {
//!     println!("{:?}", header.get(None).await?);
//! }
//! let size = |f: &String| Signature::new("workflow.size").arg(f);
//! let sizes = client.apply_async(&group(files.iter().map(size))).await?;
//! println!("{:?}", sizes.get(None).await?);
//! # Ok(()) }
//! ```
//!
//! - [`signature`]: the builder ([`Signature`], [`chain`], [`group`],
//!   [`chord`], `|`);
//! - [`result`]: [`Client`] (send a task or a canvas, freeze one) and the
//!   results ([`AsyncResult`], [`GroupResult`], [`CanvasResult`]);
//! - [`canvas`]: applying a wire signature of any canvas type from a worker
//!   (the next step of a chain, links, chord bodies).
//!
//! The producer is [`celeriac_broker::Producer`], re-exported here with its
//! options.

mod apply;
pub mod canvas;
mod engine;
pub mod result;
pub mod signature;

pub use canvas::{freeze, Applied, Applier, Call, CanvasError, ChordSizeError, ChordSizes, Lineage, Plan, PlanLimits};
pub use celeriac_broker::{Expires, Producer, ProducerConfig, SendOptions};
pub use result::{AsyncResult, CanvasResult, Client, ConnectError, GroupResult, ResultError};
pub use signature::{chain, chord, group, Signature};
