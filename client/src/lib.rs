//! celeriac's client side: send tasks, apply canvases (chain, group, chord)
//! exactly as Celery does, and read results, without compiling the worker.
//!
//! - [`canvas`]: applying a signature of any canvas type (the worker uses it
//!   for the next step of a chain, links and chord bodies);
//! - [`result`]: [`Client`] (send a task, get an [`AsyncResult`]).

pub mod canvas;
pub mod result;

pub use canvas::{freeze, Applied, Applier, CanvasError, ChordSizes, Lineage};
pub use result::{AsyncResult, Client, ResultError};
