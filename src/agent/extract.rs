//! Request extractors whose every refusal is an [`ApiError`] (JSON, stable kind): the body as
//! JSON (size limit: 413 `body_too_large`; malformed JSON, unknown fields, wrong types: 400
//! `bad_request`; `null` fields refused, whole floats read as integers, as the schema reads
//! them), path parameters and query strings.

use super::errors::ApiError;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

/// A JSON request body; an empty body reads as `{}` (every field optional).
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|r| {
                let kind = if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    "body_too_large"
                } else {
                    "bad_request"
                };
                ApiError::new(r.status(), kind, r.body_text())
            })?;
        let text: &[u8] = if bytes.is_empty() { b"{}" } else { &bytes };
        let mut value: serde_json::Value = serde_json::from_slice(text)
            .map_err(|e| ApiError::bad_request(format!("request body: {e}")))?;
        normalize(&mut value, "").map_err(ApiError::bad_request)?;
        serde_json::from_value(value)
            .map(Body)
            .map_err(|e| ApiError::bad_request(format!("request body: {e}")))
    }
}

/// Reads a body as its schema does: a field is left out or has a value (`null` is refused,
/// not taken for "left out"), and a number with no fractional part is an integer (`1.0` is
/// JSON Schema's integer 1).
fn normalize(v: &mut serde_json::Value, at: &str) -> Result<(), String> {
    use serde_json::Value;
    match v {
        Value::Null if !at.is_empty() => Err(format!(
            "request body: {at} is null: leave the field out or give it a value"
        )),
        Value::Object(fields) => fields.iter_mut().try_for_each(|(k, f)| {
            normalize(
                f,
                &format!("{at}{}{k}", if at.is_empty() { "" } else { "." }),
            )
        }),
        Value::Array(items) => items
            .iter_mut()
            .enumerate()
            .try_for_each(|(i, f)| normalize(f, &format!("{at}[{i}]"))),
        Value::Number(n) if n.is_f64() => {
            if let Some(f) = n.as_f64().filter(|f| f.fract() == 0.0) {
                if f >= 0.0 && f < u64::MAX as f64 {
                    *v = Value::from(f as u64);
                } else if f < 0.0 && f >= i64::MIN as f64 {
                    *v = Value::from(f as i64);
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Path parameters.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Path(p.0))
            .map_err(|r| ApiError::bad_request(r.body_text()))
    }
}

/// The query string.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|q| Query(q.0))
            .map_err(|r| ApiError::bad_request(r.body_text()))
    }
}

#[cfg(test)]
mod tests {
    use super::normalize;
    use serde_json::json;

    #[test]
    fn nulls_are_refused_and_whole_floats_are_integers() {
        let mut v = json!({"dry_run": null});
        assert!(matches!(normalize(&mut v, ""), Err(e) if e.contains("dry_run is null")));
        let mut v = json!({"pvs": ["a", null]});
        assert!(matches!(normalize(&mut v, ""), Err(e) if e.contains("pvs[1] is null")));
        let mut v = json!({"size": 1048576.0, "generation": 2.5, "n": -3.0});
        assert_eq!(normalize(&mut v, ""), Ok(()));
        assert_eq!(v, json!({"size": 1048576u64, "generation": 2.5, "n": -3}));
    }
}
