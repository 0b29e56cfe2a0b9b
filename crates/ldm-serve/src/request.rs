//! What every API's request comes down to before the runtime plans it.

use ldm_core::SamplerKind;
use ldm_runtime::Generate;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use crate::error::ApiError;

/// A request for `images` images of `prompt` (at most `max_images`, checked before anything
/// is allocated for them), the rest at the bundle's defaults; a seed is drawn when none is
/// given.
pub fn generate(
    prompt: &str,
    images: usize,
    max_images: usize,
    negative_prompt: &str,
    seed: Option<u64>,
) -> Result<Generate, ApiError> {
    if images == 0 {
        return Err(ApiError::field("n", "at least one image must be asked for"));
    }
    if images > max_images {
        return Err(ApiError::field(
            "n",
            format!("{images} images in one request; at most {max_images} are allowed"),
        ));
    }
    Ok(Generate::new(vec![prompt.to_string(); images])
        .negative_prompt(negative_prompt)
        .seed(seed.unwrap_or_else(crate::random_seed)))
}

/// Refuses an image side of zero or beyond the server's `max_side`, by the field's name.
pub fn check_side(what: &str, side: usize, max_side: usize) -> Result<(), ApiError> {
    if side == 0 || side > max_side {
        return Err(ApiError::field(
            what,
            format!("{what} {side}; sides of 1 to {max_side} pixels are allowed"),
        ));
    }
    Ok(())
}

/// A sampler by name, when one is given ("" is the model's own).
pub fn sampler(name: Option<&str>) -> Result<Option<SamplerKind>, ApiError> {
    name.filter(|n| !n.is_empty())
        .map(|n| n.parse().map_err(|e: String| ApiError::field("sampler", e)))
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

/// Serde: an optional whole number, also when written as a float with no fraction (`16.0`),
/// which JSON Schema counts as an integer too; null is none.
pub fn whole<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<i64> + TryFrom<u64>,
{
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    let value = match (n.as_u64(), n.as_i64(), n.as_f64()) {
        (Some(v), _, _) => T::try_from(v).ok(),
        (_, Some(v), _) => T::try_from(v).ok(),
        // Floats are exact integers up to 2^53.
        (_, _, Some(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => T::try_from(f as i64).ok(),
        _ => None,
    };
    value
        .map(Some)
        .ok_or_else(|| D::Error::custom(format!("{n} is not a whole number in range")))
}
