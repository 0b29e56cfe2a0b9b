//! What every API's request comes down to before the runtime plans it.

use ldm_runtime::{Generate, Image};

use crate::error::ApiError;

/// A generation request in the runtime's terms, from any API.
#[derive(Debug, Clone, Default)]
pub struct Ask {
    pub prompt: String,
    pub negative_prompt: String,
    pub images: usize,
    pub width: Option<usize>,
    pub height: Option<usize>,
    pub steps: Option<usize>,
    pub guidance: Option<f64>,
    pub sampler: Option<String>,
    pub seed: Option<u64>,
    pub init_image: Option<Image>,
    pub mask: Option<Image>,
    pub strength: Option<f64>,
}

impl Ask {
    pub fn to_generate(&self) -> Result<Generate, ApiError> {
        if self.images == 0 {
            return Err(ApiError::field("n", "at least one image must be asked for"));
        }
        let mut request = Generate::new(vec![self.prompt.clone(); self.images])
            .negative_prompt(&self.negative_prompt)
            .seed(self.seed.unwrap_or_else(crate::random_seed));
        request.width = self.width;
        request.height = self.height;
        request.steps = self.steps;
        request.guidance = self.guidance;
        if let Some(name) = &self.sampler {
            request.sampler = Some(
                name.parse()
                    .map_err(|e: String| ApiError::field("sampler", e))?,
            );
        }
        request.init_image = self.init_image.clone();
        request.mask = self.mask.clone();
        request.strength = self.strength;
        Ok(request)
    }
}

/// "WxH" as (width, height); "auto" as the model's own size.
pub fn size(text: &str) -> Result<Option<(usize, usize)>, ApiError> {
    if text == "auto" {
        return Ok(None);
    }
    let parsed = text
        .split_once('x')
        .and_then(|(w, h)| Some((w.trim().parse().ok()?, h.trim().parse().ok()?)));
    match parsed {
        Some((w, h)) => Ok(Some((w, h))),
        None => Err(ApiError::field(
            "size",
            format!("size '{text}' is not WIDTHxHEIGHT (for example 64x64) or auto"),
        )),
    }
}
