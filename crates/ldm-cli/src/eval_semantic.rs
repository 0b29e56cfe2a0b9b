//! `ldm eval` on semantic-map bundles: each held-out row's map is drawn at the training size
//! and at twice it (convolutional sampling, paper Fig. 9), read back from the pixels by the
//! scene judge (`ldm_data::scene_judge`), and scored by mean IoU against the asked map; beside
//! it, the judge's own score on the real images (its ceiling) and what ignoring the map
//! scores (an all-background answer).

use std::path::Path;

use image::{GrayImage, RgbImage};
use ldm_core::semantic::ClassMap;
use ldm_data::scene_judge::{map_mean_iou, read_scene, resize_map};
use ldm_runtime::{Image, Pipeline};
use serde::{Deserialize, Serialize};

use crate::eval::{from_rgb, mean, to_rgb};
use crate::generate::{grid, write_png, SamplingArgs};

#[derive(Serialize, Deserialize)]
pub struct SemanticScores {
    pub rows: usize,
    /// Mean over images of the mean IoU over the classes present (the background included).
    pub miou: f64,
    /// The same with the map and the image at twice the training size.
    pub miou_2x: f64,
    /// The judge on the held-out images themselves.
    pub real_miou: f64,
    /// An answer that ignores the map: every pixel background.
    pub ignored_map_miou: f64,
}

/// Scores the rows whose maps are `maps` (their images in `real`, both at the bundle's
/// resolution) and writes semantic-samples.png: the real images over those generated at 1x.
pub fn evaluate(
    pipeline: &mut Pipeline,
    maps: &[GrayImage],
    real: &[RgbImage],
    sampling: &SamplingArgs,
    out: &Path,
) -> anyhow::Result<SemanticScores> {
    let side = pipeline.bundle().manifest.resolution;
    let bar = crate::progress::bar("drawing maps");
    bar.set_length(2 * maps.len() as u64);
    let (mut ious, mut ious_2x, mut real_ious, mut ignored) = (vec![], vec![], vec![], vec![]);
    let mut shown = Vec::new();
    for (i, (asked, real)) in maps.iter().zip(real).enumerate() {
        real_ious.push(map_mean_iou(asked, &read_scene(real).map));
        ignored.push(map_mean_iou(
            asked,
            &GrayImage::new(side as u32, side as u32),
        ));
        for (scale, scores) in [(1, &mut ious), (2, &mut ious_2x)] {
            let asked = resize_map(asked, (scale * side) as u32);
            let image = draw(pipeline, &asked, sampling, sampling.seed + i as u64)?;
            scores.push(map_mean_iou(&asked, &read_scene(&image).map));
            if scale == 1 && shown.len() < 16 {
                shown.push((real.clone(), image));
            }
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let (reals, generated): (Vec<_>, Vec<_>) = shown.into_iter().unzip();
    let tiles: Vec<Image> = reals.iter().chain(&generated).map(from_rgb).collect();
    write_png(&out.join("semantic-samples.png"), &grid(&tiles))?;
    Ok(SemanticScores {
        rows: maps.len(),
        miou: mean(&ious),
        miou_2x: mean(&ious_2x),
        real_miou: mean(&real_ious),
        ignored_map_miou: mean(&ignored),
    })
}

/// One image drawn from `map` at its size.
fn draw(
    pipeline: &mut Pipeline,
    map: &GrayImage,
    sampling: &SamplingArgs,
    seed: u64,
) -> anyhow::Result<RgbImage> {
    let mut request = sampling.request(vec![String::new()], seed);
    request.semantic_map = Some(ClassMap {
        width: map.width() as usize,
        height: map.height() as usize,
        ids: map.as_raw().clone(),
    });
    Ok(to_rgb(
        pipeline.generate(&request, &mut |_| true)?.remove(0),
    ))
}
