//! Reading a request body under the size limit: a body over it gets 413 with a JSON error, whether
//! `Content-Length` announces it or the bytes only prove it while streaming in.

use crate::error::ApiError;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode};

pub async fn read_body(body: Body, headers: &HeaderMap, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body is over the {limit}-byte limit; send smaller batches"),
        )
    };
    let announced = headers.get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|length| length > limit as u64) {
        return Err(too_large());
    }
    axum::body::to_bytes(body, limit).await.map_err(|error| {
        // http-body's `LengthLimitError` reads "length limit exceeded".
        if error.to_string().contains("length limit") {
            too_large()
        } else {
            ApiError::bad_request("unreadable_body", format!("the body could not be read: {error}"))
        }
    })
}
