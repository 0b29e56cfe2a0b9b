//! What every API's request comes down to before the runtime plans it.

use ldm_core::SamplerKind;
use ldm_runtime::Generate;

use crate::error::ApiError;

/// A request for `images` images of `prompt`, the rest at the bundle's defaults; a seed is
/// drawn when none is given.
pub fn generate(
    prompt: &str,
    images: usize,
    negative_prompt: &str,
    seed: Option<u64>,
) -> Result<Generate, ApiError> {
    if images == 0 {
        return Err(ApiError::field("n", "at least one image must be asked for"));
    }
    Ok(Generate::new(vec![prompt.to_string(); images])
        .negative_prompt(negative_prompt)
        .seed(seed.unwrap_or_else(crate::random_seed)))
}

/// A sampler by name, when one is given.
pub fn sampler(name: Option<&str>) -> Result<Option<SamplerKind>, ApiError> {
    name.map(|n| n.parse().map_err(|e: String| ApiError::field("sampler", e)))
        .transpose()
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
