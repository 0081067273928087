//! Google Gemini API (being written: returns an error until then).

use crate::registry::ResolvedProvider;
use crate::{Delta, ModelError, ModelRequest, ModelResponse, Provider, Result};
use async_trait::async_trait;

pub struct Gemini {
    p: ResolvedProvider,
    name: String,
}

impl Gemini {
    pub fn new(p: ResolvedProvider) -> Result<Gemini> {
        Ok(Gemini {
            name: p.full_name(),
            p,
        })
    }
}

#[async_trait]
impl Provider for Gemini {
    fn name(&self) -> &str {
        &self.name
    }
    async fn stream(
        &self,
        _req: &ModelRequest,
        _on_delta: &mut (dyn for<'d> FnMut(Delta<'d>) + Send),
    ) -> Result<ModelResponse> {
        Err(ModelError::Config(format!(
            "{}: the {:?} adapter is not written yet",
            self.name, self.p.kind
        )))
    }
}
