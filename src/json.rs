//! [`JsonLine`]: a JSON response body that ends with a newline, as a terminal expects (two
//! `curl` outputs in a row do not run together).

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};

/// `T` as `application/json`, followed by `\n`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct JsonLine<T>(pub T);

impl<T: serde::Serialize> IntoResponse for JsonLine<T> {
    fn into_response(self) -> Response {
        match serde_json::to_vec(&self.0) {
            Ok(mut body) => {
                body.push(b'\n');
                (
                    [(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    )],
                    body,
                )
                    .into_response()
            }
            Err(error) => {
                tracing::error!(%error, "a response could not be serialized");
                StatusCode::INTERNAL_SERVER_ERROR.into_response()
            }
        }
    }
}
