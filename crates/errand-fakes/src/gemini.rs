//! (being written)

use crate::{ErrorKind, Rendered, Turn};
use serde_json::{Value, json};

pub(crate) fn render(_turn: &Turn, _model: &str, _n: usize) -> Rendered {
    Rendered {
        frames: vec![],
        json: json!({}),
    }
}

pub(crate) fn error_body(_status: u16, _kind: ErrorKind, message: &str) -> Value {
    json!({"error": {"message": message}})
}

pub(crate) fn stream_error(_kind: ErrorKind, _message: &str) -> String {
    String::new()
}

pub(crate) fn probe(_path: &str) -> Option<Value> {
    None
}
