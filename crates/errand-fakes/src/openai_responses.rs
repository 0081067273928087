//! (being written)

use crate::{ErrorKind, Rendered, Turn};
use serde_json::{Value, json};

pub(crate) fn render(_turn: &Turn, _model: &str, _n: usize) -> Rendered {
    Rendered {
        frames: vec![],
        json: json!({}),
    }
}

pub(crate) fn error_body(_kind: ErrorKind, message: &str) -> Value {
    json!({"error": {"message": message}})
}

pub(crate) fn stream_error(_kind: ErrorKind, _message: &str, _model: &str, _n: usize) -> String {
    String::new()
}

pub(crate) fn probe(_path: &str) -> Option<Value> {
    None
}
