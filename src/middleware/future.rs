//! The future returned by [`super::SessionFailover`].

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// The response future of [`super::SessionFailover`]: load, call the inner service, save.
pub struct ResponseFuture<T, E> {
    pub(super) inner: Pin<Box<dyn Future<Output = Result<T, E>> + Send>>,
}

impl<T, E> Future for ResponseFuture<T, E> {
    type Output = Result<T, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<T, E> std::fmt::Debug for ResponseFuture<T, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
