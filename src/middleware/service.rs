//! The [`SessionFailover`] service.

use std::future::Future as _;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response, StatusCode};
use tower::Service;

use super::app::{Answer, AppShared, Loaded};
use super::future::ResponseFuture;

/// Middleware that gives each request its [`crate::Session`] and persists it afterwards.
///
/// Made by [`super::SessionFailoverLayer`].
#[derive(Clone)]
pub struct SessionFailover<S> {
    pub(super) inner: S,
    pub(super) app: Arc<AppShared>,
}

impl<S> std::fmt::Debug for SessionFailover<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionFailover")
            .field("app", &self.app.settings.app)
            .finish_non_exhaustive()
    }
}

/// An empty response of `status` in place of `original`, keeping its session cookies (a rotated
/// or new session's id must still reach the client).
/// An empty answer with `status` and no cookie: nothing of the request happened to the
/// session. A 503 asks the client to retry in a second.
fn refusal<B: Default>(status: StatusCode) -> Response<B> {
    let mut response = Response::new(B::default());
    *response.status_mut() = status;
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response.headers_mut().insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("1"),
        );
    }
    response
}

fn replace<B: Default>(original: &Response<B>, status: StatusCode) -> Response<B> {
    let mut response = Response::new(B::default());
    *response.status_mut() = status;
    for cookie in original.headers().get_all(http::header::SET_COOKIE) {
        response
            .headers_mut()
            .append(http::header::SET_COOKIE, cookie.clone());
    }
    response
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for SessionFailover<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        // Use the service that was driven to readiness; leave a fresh clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let app = Arc::clone(&self.app);
        ResponseFuture {
            inner: Box::pin(async move {
                let (ids, hint, secure) = {
                    let found = app.cookies(request.headers());
                    let secure = super::settings::is_secure(
                        request.uri().scheme_str(),
                        found.forwarded_proto,
                        found.forwarded,
                    );
                    (found.ids, found.hint, secure)
                };
                // One clock read for the request: the cache's idle expiry and the touch schedule
                // (a touch due by the arrival time is at most one handler's time early).
                let now = crate::store::now_millis();
                let session = match app.load(&ids, hint, now).await {
                    Loaded::Session(session) => session,
                    Loaded::StoreDown => return Ok(refusal(StatusCode::SERVICE_UNAVAILABLE)),
                };
                request.extensions_mut().insert(session.clone());
                let mut response = inner.call(request).await?;
                let had_cookie = !ids.is_empty();
                if let Some(finish) =
                    app.plan(&session, had_cookie, secure, response.headers_mut(), now)
                {
                    // If this future is dropped (client gone, timeout), the save, logout or
                    // rotation must still complete. Polled once here, it often completes at once
                    // (async mode queues, memory-only has nothing to write): nothing can cut
                    // that short. Otherwise it finishes in its own task, which is what a spawn
                    // per request would cost every time.
                    let mut finish = Box::pin(Arc::clone(&app).execute(finish));
                    // A panic (a user `Serialize`, say) is contained as it is in a task: logged,
                    // and the response still sent.
                    let polled = std::future::poll_fn(|cx| {
                        Poll::Ready(std::panic::catch_unwind(std::panic::AssertUnwindSafe(
                            || finish.as_mut().poll(cx),
                        )))
                    })
                    .await;
                    let answer = match polled {
                        Ok(Poll::Ready(answer)) => Some(answer),
                        Ok(Poll::Pending) => tokio::spawn(finish)
                            .await
                            .inspect_err(|error| {
                                tracing::error!(%error, "session save task failed");
                            })
                            .ok(),
                        Err(_) => {
                            tracing::error!("session save panicked");
                            None
                        }
                    };
                    match answer.map(|executed| (executed.answer, executed.row)) {
                        Some((Answer::Done, Some(row))) => {
                            app.set_version_cookie(response.headers_mut(), row, secure);
                        }
                        Some((Answer::Done, None)) => {}
                        // The save failed in a way nobody can vouch for (a panic, a lost
                        // task): its change is not acknowledged.
                        None => {
                            return Ok(replace(&response, StatusCode::INTERNAL_SERVER_ERROR));
                        }
                        // The change was not kept: do not acknowledge it.
                        Some((Answer::Conflict, _)) => {
                            return Ok(replace(&response, StatusCode::CONFLICT));
                        }
                        // The cause is in the log (the attribute names), not in the body.
                        Some((Answer::CheckFailed, _)) => {
                            return Ok(replace(&response, StatusCode::INTERNAL_SERVER_ERROR));
                        }
                        // Not committed, not kept: nothing of the request happened to the
                        // session, so no cookie either (a rotation keeps the old id).
                        Some((Answer::Unavailable, _)) => {
                            return Ok(refusal(StatusCode::SERVICE_UNAVAILABLE));
                        }
                        // The same, for a session that cannot be stored (too large): a retry
                        // would fail again.
                        Some((Answer::NotSaved, _)) => {
                            return Ok(refusal(StatusCode::INTERNAL_SERVER_ERROR));
                        }
                    }
                }
                Ok(response)
            }),
        }
    }
}
