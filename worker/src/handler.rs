//! Handlers: plain functions whose parameters are extractors, turned into one
//! erased shape the worker can run.
//!
//! `async fn(A, B, ...) -> Result<R, TaskError>` runs on the async runtime;
//! a plain `fn` with the same signature, registered with `Task::blocking`, runs
//! on the blocking pool so it cannot stall other tasks.

use std::future::Future;
use std::sync::Arc;

use celeriac_protocol::{to_value, Value};
use futures_util::future::BoxFuture;
use serde::Serialize;

use crate::extract::{FromInvocation, Invocation, StateNeed, States};
use crate::TaskError;

/// A task body with its parameters erased.
pub trait ErasedHandler: Send + Sync + 'static {
    /// Runs the task for an invocation.
    fn call(&self, inv: Invocation) -> BoxFuture<'static, Result<Value, TaskError>>;
}

/// An async function usable as a task. `M` is a marker for its parameter list.
pub trait Handler<M>: Clone + Send + Sync + 'static {
    /// Runs it.
    fn call(&self, inv: Invocation) -> BoxFuture<'static, Result<Value, TaskError>>;

    /// The states its parameters need ([`State<T>`](crate::State)).
    fn state_needs() -> Vec<StateNeed> {
        Vec::new()
    }
}

/// A blocking function usable as a task (runs on tokio's blocking pool).
pub trait BlockingHandler<M>: Clone + Send + Sync + 'static {
    /// Runs it, blocking the calling thread.
    fn call_blocking(&self, inv: Invocation) -> Result<Value, TaskError>;

    /// The states its parameters need ([`State<T>`](crate::State)).
    fn state_needs() -> Vec<StateNeed> {
        Vec::new()
    }
}

fn encode<R: Serialize>(r: R) -> Result<Value, TaskError> {
    to_value(&r).map_err(|e| TaskError::builtin("TypeError", format!("result cannot be encoded: {e}")))
}

macro_rules! impl_handlers {
    ($($ty:ident),*) => {
        #[allow(non_snake_case, unused_variables)]
        impl<F, Fut, R, $($ty,)*> Handler<($($ty,)*)> for F
        where
            F: Fn($($ty),*) -> Fut + Clone + Send + Sync + 'static,
            Fut: Future<Output = Result<R, TaskError>> + Send + 'static,
            R: Serialize,
            $($ty: FromInvocation + Send + 'static,)*
        {
            fn call(&self, inv: Invocation) -> BoxFuture<'static, Result<Value, TaskError>> {
                $(let $ty = match $ty::from_invocation(&inv) {
                    Ok(v) => v,
                    Err(e) => return Box::pin(async move { Err(e) }),
                };)*
                let fut = (self)($($ty),*);
                Box::pin(async move { encode(fut.await?) })
            }

            fn state_needs() -> Vec<StateNeed> {
                #[allow(unused_mut)] // no parameters: nothing to add
                let mut needs: Vec<StateNeed> = Vec::new();
                $(needs.extend($ty::needs_state());)*
                needs
            }
        }

        #[allow(non_snake_case, unused_variables)]
        impl<F, R, $($ty,)*> BlockingHandler<($($ty,)*)> for F
        where
            F: Fn($($ty),*) -> Result<R, TaskError> + Clone + Send + Sync + 'static,
            R: Serialize,
            $($ty: FromInvocation + Send + 'static,)*
        {
            fn call_blocking(&self, inv: Invocation) -> Result<Value, TaskError> {
                $(let $ty = $ty::from_invocation(&inv)?;)*
                encode((self)($($ty),*)?)
            }

            fn state_needs() -> Vec<StateNeed> {
                #[allow(unused_mut)] // no parameters: nothing to add
                let mut needs: Vec<StateNeed> = Vec::new();
                $(needs.extend($ty::needs_state());)*
                needs
            }
        }
    };
}

impl_handlers!();
impl_handlers!(T1);
impl_handlers!(T1, T2);
impl_handlers!(T1, T2, T3);
impl_handlers!(T1, T2, T3, T4);
impl_handlers!(T1, T2, T3, T4, T5);

pub(crate) struct AsyncFn<H, M> {
    pub(crate) handler: H,
    pub(crate) _marker: std::marker::PhantomData<fn() -> M>,
}

impl<H: Handler<M>, M: 'static> ErasedHandler for AsyncFn<H, M> {
    fn call(&self, inv: Invocation) -> BoxFuture<'static, Result<Value, TaskError>> {
        self.handler.call(inv)
    }
}

pub(crate) struct BlockingFn<H, M> {
    pub(crate) handler: H,
    pub(crate) _marker: std::marker::PhantomData<fn() -> M>,
}

impl<H: BlockingHandler<M>, M: 'static> ErasedHandler for BlockingFn<H, M> {
    fn call(&self, inv: Invocation) -> BoxFuture<'static, Result<Value, TaskError>> {
        let handler = self.handler.clone();
        Box::pin(async move {
            match tokio::task::spawn_blocking(move || handler.call_blocking(inv)).await {
                Ok(result) => result,
                Err(e) => Err(TaskError::fail(format!("the blocking task panicked: {e}"))),
            }
        })
    }
}

/// Shared, erased handler.
pub type SharedHandler = Arc<dyn ErasedHandler>;

/// A handler called with its registry's states.
pub(crate) struct WithStates {
    pub(crate) inner: SharedHandler,
    pub(crate) states: Arc<States>,
}

impl ErasedHandler for WithStates {
    fn call(&self, inv: Invocation) -> BoxFuture<'static, Result<Value, TaskError>> {
        self.inner.call(inv.with_states(self.states.clone()))
    }
}
