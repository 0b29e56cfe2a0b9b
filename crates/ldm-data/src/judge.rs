//! Reads a procedural scene back from its pixels: background, colour, shape, size and grid
//! position, so a model's conditioning accuracy on the shapes data can be measured without
//! any learned classifier.

use image::RgbImage;

use crate::shapes::{BACKGROUNDS, COLOURS, GRID, LARGE_ABOVE, POSITIONS};

/// What the pixels show, in the caption's vocabulary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judgement {
    pub background: &'static str,
    pub colour: &'static str,
    pub shape: &'static str,
    pub large: bool,
    /// "top left", "center", ... as in captions.
    pub position: &'static str,
}

impl Judgement {
    /// The value read for a caption attribute, as the shapes metadata names it ("colour",
    /// "shape", "size", "position" or "background"); None for any other name.
    pub fn attribute(&self, name: &str) -> Option<&'static str> {
        match name {
            "colour" => Some(self.colour),
            "shape" => Some(self.shape),
            "size" => Some(if self.large { "large" } else { "small" }),
            "position" => Some(self.position),
            "background" => Some(self.background),
            _ => None,
        }
    }
}

/// Pixels further than this (RGB Euclidean) from the nearest palette colour are edges or
/// noise and do not vote.
pub(crate) const PALETTE_TOLERANCE: f32 = 70.0;

pub(crate) fn distance(a: [u8; 3], b: [u8; 3]) -> f32 {
    a.iter()
        .zip(&b)
        .map(|(&x, &y)| (x as f32 - y as f32).powi(2))
        .sum::<f32>()
        .sqrt()
}

pub(crate) fn nearest(table: &[(&'static str, [u8; 3])], rgb: [u8; 3]) -> (usize, f32) {
    table
        .iter()
        .enumerate()
        .map(|(i, (_, c))| (i, distance(*c, rgb)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .expect("non-empty palette")
}

/// Judges a scene image; `None` when no shape-coloured pixels are found.
pub fn judge(image: &RgbImage) -> Option<Judgement> {
    let (w, h) = image.dimensions();
    let background = background_of(image);
    let bg = BACKGROUNDS[background].1;

    // Shape pixels: close to a shape colour and closer to it than to the background.
    let mut colour_votes = [0usize; COLOURS.len()];
    let (mut area, mut sx, mut sy) = (0usize, 0f32, 0f32);
    let (mut x0, mut y0, mut x1, mut y1) = (u32::MAX, u32::MAX, 0, 0);
    let is_shape = |rgb: [u8; 3]| {
        let (colour, d) = nearest(&COLOURS, rgb);
        (d <= PALETTE_TOLERANCE && distance(bg, rgb) >= d).then_some(colour)
    };
    for (x, y, p) in image.enumerate_pixels() {
        let Some(colour) = is_shape(p.0) else {
            continue;
        };
        colour_votes[colour] += 1;
        area += 1;
        (sx, sy) = (sx + x as f32, sy + y as f32);
        (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
    }
    if area < 4 {
        return None;
    }
    let member = |x: u32, y: u32| is_shape(image.get_pixel(x, y).0).is_some();
    let (shape, (_, height_in_radii)) = read_outline(&member, (x0, x1, y0, y1), area);
    let bh = (y1 - y0 + 1) as f32;
    let radius = bh / h as f32 / height_in_radii;
    let (cx, cy) = (sx / area as f32 / w as f32, sy / area as f32 / h as f32);
    Some(Judgement {
        background: BACKGROUNDS[background].0,
        colour: COLOURS[argmax(&colour_votes)].0,
        shape,
        large: radius > LARGE_ABOVE,
        position: POSITIONS[grid_cell(cy)][grid_cell(cx)],
    })
}

/// The background's index in BACKGROUNDS: the majority vote of the border pixels.
pub(crate) fn background_of(image: &RgbImage) -> usize {
    let (w, h) = image.dimensions();
    let mut votes = [0usize; BACKGROUNDS.len()];
    for (x, y, p) in image.enumerate_pixels() {
        if x == 0 || y == 0 || x == w - 1 || y == h - 1 {
            votes[nearest(&BACKGROUNDS, p.0).0] += 1;
        }
    }
    argmax(&votes)
}

/// The grid row or column (0..3) nearest to a coordinate given as a fraction of the side.
pub(crate) fn grid_cell(c: f32) -> usize {
    GRID.iter()
        .enumerate()
        .min_by(|a, b| (a.1 - c).abs().total_cmp(&(b.1 - c).abs()))
        .expect("three cells")
        .0
}

/// The outline a region of pixels shows (`member` tells which pixels are in it, inside the
/// box (x0, x1, y0, y1) that bounds its `area` pixels), and that outline's (width, height)
/// in radii.
pub(crate) fn read_outline(
    member: &impl Fn(u32, u32) -> bool,
    (x0, x1, y0, y1): (u32, u32, u32, u32),
    area: usize,
) -> (&'static str, (f32, f32)) {
    let (bw, bh) = ((x1 - x0 + 1) as f32, (y1 - y0 + 1) as f32);
    let fill = area as f32 / (bw * bh);
    // Triangle and star point up, so the top of their box is nearly empty; the triangle's
    // base fills the bottom of its box, the star's two legs barely touch it. Of the others,
    // the square fills its box, the circle pi/4 of it.
    let band = |top: bool| band_fill(member, (x0, x1, y0, y1), top);
    if band(true) < 0.3 {
        if band(false) > 0.5 {
            // Width 2 cos 30 degrees, height 1 + sin 30 degrees.
            ("triangle", (1.732, 1.5))
        } else {
            // Width 2 cos 18 degrees, height 1 + cos 36 degrees.
            ("star", (1.902, 1.809))
        }
    } else if fill > 0.9 {
        ("square", (1.7, 1.7))
    } else {
        ("circle", (2.0, 2.0))
    }
}

/// Fraction of the region's pixels in the top (or bottom) 15 % of its bounding box.
fn band_fill(
    member: &impl Fn(u32, u32) -> bool,
    (x0, x1, y0, y1): (u32, u32, u32, u32),
    top: bool,
) -> f32 {
    let rows = ((0.15 * (y1 - y0 + 1) as f32).round() as u32).max(1);
    let ys = if top {
        y0..=y0 + rows - 1
    } else {
        y1 + 1 - rows..=y1
    };
    let mut filled = 0;
    for y in ys {
        for x in x0..=x1 {
            filled += member(x, y) as u32;
        }
    }
    filled as f32 / (rows * (x1 - x0 + 1)) as f32
}

pub(crate) fn argmax(votes: &[usize]) -> usize {
    votes
        .iter()
        .enumerate()
        .max_by_key(|(_, v)| **v)
        .map_or(0, |(i, _)| i)
}
