//! (being written)

use crate::{ErrorKind, Rendered, Turn};
use serde_json::json;

pub(crate) fn render(_turn: &Turn, _model: &str, _n: usize) -> Rendered {
    Rendered {
        frames: vec![],
        json: json!({}),
    }
}

pub(crate) fn stream_error(_kind: ErrorKind, _message: &str) -> String {
    String::new()
}
