//! Reads a scene of several shapes back from its pixels (each shape's class, colour, size,
//! grid cell and box, and the semantic map), and scores what was read against what was
//! asked: objects matched one to one, semantic maps by mean IoU, captions attribute by
//! attribute. No learned network takes part, so the figures are exact and repeatable.

use image::{GrayImage, Luma, RgbImage};

use crate::judge::{background_of, distance, grid_cell, nearest, PALETTE_TOLERANCE};
use crate::scenes::SceneObject;
use crate::shapes::{Outline, BACKGROUNDS, COLOURS, LARGE_ABOVE, POSITIONS, SHAPES};

/// A rim pixel belongs to a shape when it is at least half the shape's colour over the
/// background (the mix that anti-aliased edges show) and off that mix by at most this much.
const MIX_TOLERANCE: f32 = 60.0;
/// Regions smaller than this share of the image are specks, not shapes.
const MIN_AREA_SHARE: f32 = 0.004;
/// A read box must overlap the asked one this much (IoU) to count as the same object.
pub const MATCH_IOU: f32 = 0.5;

/// What the pixels of a scene show.
#[derive(Debug, Clone)]
pub struct SceneReading {
    pub background: &'static str,
    pub objects: Vec<SceneObject>,
    /// Class ids per pixel, as the scene data's semantic maps.
    pub map: GrayImage,
}

/// Reads every shape of a scene image. Pixels near a palette colour are grouped into
/// 8-connected regions of one colour; regions large enough are shapes. Each then takes the
/// anti-aliased pixels on its rim that are at least half its colour over the background,
/// and is read as one shape.
pub fn read_scene(image: &RgbImage) -> SceneReading {
    let (w, h) = image.dimensions();
    let background = background_of(image);
    let bg = BACKGROUNDS[background].1;
    let colours: Vec<Option<u8>> = image.pixels().map(|p| palette_colour(p.0, bg)).collect();
    // Regions grow from pixels whose 4 neighbours show their colour too, so that the thin
    // strips where an edge's mix with the background looks like another palette colour
    // never start one.
    let seeds: Vec<bool> = (0..colours.len())
        .map(|p| {
            let (x, y) = (p as u32 % w, p as u32 / w);
            colours[p].is_some()
                && x > 0
                && y > 0
                && x + 1 < w
                && y + 1 < h
                && [p - 1, p + 1, p - w as usize, p + w as usize]
                    .iter()
                    .all(|&q| colours[q] == colours[p])
        })
        .collect();
    let mut region = vec![UNSEEN; colours.len()];
    let min_area = ((MIN_AREA_SHARE * (w * h) as f32).ceil() as usize).max(4);
    let mut regions: Vec<(u8, Vec<usize>)> = Vec::new();
    for start in 0..colours.len() {
        if !seeds[start] || region[start] != UNSEEN {
            continue;
        }
        let colour = colours[start].expect("seeds show a colour");
        let id = regions.len() as u32;
        let pixels = flood(&colours, &mut region, start, colour, id, (w, h));
        if pixels.len() >= min_area {
            regions.push((colour, pixels));
        } else {
            for p in pixels {
                region[p] = SPECK;
            }
        }
    }
    // The rims: one pixel around each region, where the pixel is mostly that colour.
    for (id, (colour, pixels)) in regions.iter_mut().enumerate() {
        let rgb = COLOURS[*colour as usize].1;
        let mut rim = Vec::new();
        for &p in pixels.iter() {
            for q in neighbours(p, (w, h)) {
                if region[q] == UNSEEN {
                    let pixel = image.get_pixel(q as u32 % w, q as u32 / w).0;
                    if mostly(pixel, rgb, bg) {
                        region[q] = id as u32;
                        rim.push(q);
                    }
                }
            }
        }
        pixels.extend(rim);
    }
    let mut map = GrayImage::new(w, h);
    let objects = regions
        .iter()
        .enumerate()
        .map(|(id, (colour, pixels))| {
            let mut object = read_region(*colour, pixels, (w, h));
            let member = |p: usize| region[p] == id as u32;
            let hidden = |p: usize| region[p] != id as u32 && region[p] < SPECK;
            let (shape, radius) = fit_outline(&member, &hidden, object.bbox, (w, h));
            object.shape = shape.to_string();
            object.radius = radius;
            object.large = radius > LARGE_ABOVE;
            for &p in pixels {
                map.put_pixel(p as u32 % w, p as u32 / w, Luma([object.class_id()]));
            }
            object
        })
        .collect();
    SceneReading {
        background: BACKGROUNDS[background].0,
        objects,
        map,
    }
}

/// Region marks: not yet visited, and too small to be a shape.
const UNSEEN: u32 = u32::MAX;
const SPECK: u32 = u32::MAX - 1;

/// The colour, cell and box of a region of pixels; its shape and size are fitted after.
fn read_region(colour: u8, pixels: &[usize], (w, h): (u32, u32)) -> SceneObject {
    let (mut x0, mut y0, mut x1, mut y1) = (u32::MAX, u32::MAX, 0, 0);
    let (mut sx, mut sy) = (0.0f32, 0.0f32);
    for &p in pixels {
        let (x, y) = (p as u32 % w, p as u32 / w);
        (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
        (sx, sy) = (sx + x as f32, sy + y as f32);
    }
    let n = pixels.len() as f32;
    let centre = (sx / n / w as f32, sy / n / h as f32);
    SceneObject {
        shape: String::new(),
        colour: COLOURS[colour as usize].0.to_string(),
        large: false,
        position: POSITIONS[grid_cell(centre.1)][grid_cell(centre.0)].to_string(),
        bbox: [
            x0 as f32 / w as f32,
            y0 as f32 / h as f32,
            (x1 + 1) as f32 / w as f32,
            (y1 + 1) as f32 / h as f32,
        ],
        centre,
        radius: 0.0,
    }
}

/// The shape and radius (a fraction of the side) whose outline, drawn as the scene data
/// draws it, best matches a region: by IoU over the pixels that `hidden` ones (other shapes,
/// which may cover part of this one) leave in view. Searched coarse to fine around the
/// centre of the region's box; fitting copes with covered parts, where rules on the box's
/// fill do not.
fn fit_outline(
    member: &dyn Fn(usize) -> bool,
    hidden: &dyn Fn(usize) -> bool,
    bbox: [f32; 4],
    (w, h): (u32, u32),
) -> (&'static str, f32) {
    let side = w.max(h) as f32;
    let [bx0, by0, bx1, by1] = bbox.map(|v| v * side);
    let score = |outline: &Outline, (cx, cy): (f32, f32), r: f32| {
        let x0 = (bx0.min(cx - r) - 1.0).max(0.0) as u32;
        let y0 = (by0.min(cy - r) - 1.0).max(0.0) as u32;
        let x1 = (bx1.max(cx + r) + 1.0).min(w as f32) as u32;
        let y1 = (by1.max(cy + r) + 1.0).min(h as f32) as u32;
        let (mut inter, mut union) = (0u32, 0u32);
        for y in y0..y1 {
            for x in x0..x1 {
                let p = (y * w + x) as usize;
                let drawn = outline.contains((x as f32 + 0.5 - cx) / r, (cy - y as f32 - 0.5) / r);
                let seen = member(p);
                if drawn && !seen && hidden(p) {
                    continue;
                }
                inter += (drawn && seen) as u32;
                union += (drawn || seen) as u32;
            }
        }
        inter as f32 / union.max(1) as f32
    };
    // Steps of 1/64 of the side: one pixel at the data's usual 64.
    let step = side / 64.0;
    let start = ((bx0 + bx1) / 2.0, (by0 + by1) / 2.0);
    let mut best = (f32::MIN, SHAPES[0], 0.0f32);
    for shape in SHAPES {
        let outline = Outline::of(shape);
        let mut fit = (f32::MIN, start, 0.0f32);
        let consider = |fit: &mut (f32, (f32, f32), f32), centre: (f32, f32), r: f32| {
            let s = score(&outline, centre, r);
            if s > fit.0 {
                *fit = (s, centre, r);
            }
        };
        // Coarse: centres within 4 steps of the box's, every radius the data draws.
        for dy in -4..=4 {
            for dx in -4..=4 {
                let centre = (start.0 + dx as f32 * step, start.1 + dy as f32 * step);
                let mut r = 0.08 * side;
                while r <= 0.26 * side {
                    consider(&mut fit, centre, r);
                    r += step;
                }
            }
        }
        // Fine: quarter steps around the coarse best.
        let (_, c, r) = fit;
        for dy in -2..=2 {
            for dx in -2..=2 {
                for dr in -2..=2 {
                    let q = 0.25 * step;
                    consider(
                        &mut fit,
                        (c.0 + dx as f32 * q, c.1 + dy as f32 * q),
                        r + dr as f32 * q,
                    );
                }
            }
        }
        if fit.0 > best.0 {
            best = (fit.0, shape, fit.2);
        }
    }
    (best.1, best.2 / side)
}

/// The palette colour a pixel shows (within PALETTE_TOLERANCE, and nearer to it than to the
/// background), if any.
fn palette_colour(rgb: [u8; 3], bg: [u8; 3]) -> Option<u8> {
    let (colour, d) = nearest(&COLOURS, rgb);
    (d <= PALETTE_TOLERANCE && distance(bg, rgb) >= d).then_some(colour as u8)
}

/// Whether a pixel is at least half `colour` over the background: near the mix of the two.
fn mostly(rgb: [u8; 3], colour: [u8; 3], bg: [u8; 3]) -> bool {
    let d: [f32; 3] = std::array::from_fn(|k| colour[k] as f32 - bg[k] as f32);
    let o: [f32; 3] = std::array::from_fn(|k| rgb[k] as f32 - bg[k] as f32);
    let along = (0..3).map(|k| d[k] * o[k]).sum::<f32>() / (0..3).map(|k| d[k] * d[k]).sum::<f32>();
    let mix: [u8; 3] =
        std::array::from_fn(|k| (bg[k] as f32 + along.clamp(0.0, 1.0) * d[k]).round() as u8);
    along >= 0.5 && distance(mix, rgb) <= MIX_TOLERANCE
}

/// The 8 neighbours of a pixel inside the image.
fn neighbours(p: usize, (w, h): (u32, u32)) -> impl Iterator<Item = usize> {
    let (x, y) = ((p as u32 % w) as i64, (p as u32 / w) as i64);
    [
        (-1, -1),
        (0, -1),
        (1, -1),
        (-1, 0),
        (1, 0),
        (-1, 1),
        (0, 1),
        (1, 1),
    ]
    .into_iter()
    .map(move |(dx, dy)| (x + dx, y + dy))
    .filter(move |&(nx, ny)| nx >= 0 && ny >= 0 && nx < w as i64 && ny < h as i64)
    .map(move |(nx, ny)| (ny * w as i64 + nx) as usize)
}

/// Marks the 8-connected region of `colour` around `start` with `id`; returns its pixels.
fn flood(
    colours: &[Option<u8>],
    region: &mut [u32],
    start: usize,
    colour: u8,
    id: u32,
    (w, h): (u32, u32),
) -> Vec<usize> {
    let mut pixels = vec![start];
    region[start] = id;
    let mut next = 0;
    while next < pixels.len() {
        let p = pixels[next];
        next += 1;
        for q in neighbours(p, (w, h)) {
            if region[q] == UNSEEN && colours[q] == Some(colour) {
                region[q] = id;
                pixels.push(q);
            }
        }
    }
    pixels
}

/// Intersection over union of two (x0, y0, x1, y1) boxes.
pub fn box_iou(a: [f32; 4], b: [f32; 4]) -> f32 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let area = |r: [f32; 4]| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let union = area(a) + area(b) - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// Counts of one image's objects: `correct` of `asked`, with `extra` read objects that no
/// asked one matched. A missing or an extra object counts as wrong, so the figure is
/// correct / (asked + extra).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ObjectCounts {
    pub correct: usize,
    pub asked: usize,
    pub extra: usize,
}

impl std::ops::Add for ObjectCounts {
    type Output = ObjectCounts;

    fn add(self, other: ObjectCounts) -> ObjectCounts {
        ObjectCounts {
            correct: self.correct + other.correct,
            asked: self.asked + other.asked,
            extra: self.extra + other.extra,
        }
    }
}

impl ObjectCounts {
    pub fn share(&self) -> f64 {
        let all = self.asked + self.extra;
        if all == 0 {
            1.0
        } else {
            self.correct as f64 / all as f64
        }
    }
}

/// Layout-to-image: read objects matched one to one to the asked boxes, greedily by IoU
/// (at least MATCH_IOU); a match is correct when its class and colour are the asked ones.
pub fn score_layout(asked: &[SceneObject], read: &[SceneObject]) -> ObjectCounts {
    let mut pairs: Vec<(f32, usize, usize)> = asked
        .iter()
        .enumerate()
        .flat_map(|(i, a)| {
            read.iter()
                .enumerate()
                .map(move |(j, r)| (box_iou(a.bbox, r.bbox), i, j))
        })
        .filter(|(iou, _, _)| *iou >= MATCH_IOU)
        .collect();
    pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
    let (mut asked_used, mut read_used) = (vec![false; asked.len()], vec![false; read.len()]);
    let mut correct = 0;
    for (_, i, j) in pairs {
        if asked_used[i] || read_used[j] {
            continue;
        }
        (asked_used[i], read_used[j]) = (true, true);
        correct += (asked[i].shape == read[j].shape && asked[i].colour == read[j].colour) as usize;
    }
    ObjectCounts {
        correct,
        asked: asked.len(),
        extra: read_used.iter().filter(|u| !**u).count(),
    }
}

/// Text: an asked object is correct when one read object, used once, shows its colour,
/// shape, size and position; read objects beyond the asked count are extra.
pub fn score_caption(asked: &[SceneObject], read: &[SceneObject]) -> ObjectCounts {
    let mut used = vec![false; read.len()];
    let mut correct = 0;
    for a in asked {
        let same = |r: &SceneObject| {
            (&r.colour, &r.shape, r.large, &r.position)
                == (&a.colour, &a.shape, a.large, &a.position)
        };
        if let Some(j) = (0..read.len()).find(|&j| !used[j] && same(&read[j])) {
            used[j] = true;
            correct += 1;
        }
    }
    ObjectCounts {
        correct,
        asked: asked.len(),
        extra: read.len().saturating_sub(asked.len()),
    }
}

/// Mean over the classes present in either map (the background included) of their IoU.
/// The maps must have one size.
pub fn map_mean_iou(asked: &GrayImage, read: &GrayImage) -> f64 {
    let mut inter = [0usize; 256];
    let mut union = [0usize; 256];
    for (a, r) in asked.pixels().zip(read.pixels()) {
        let (a, r) = (a.0[0] as usize, r.0[0] as usize);
        if a == r {
            inter[a] += 1;
            union[a] += 1;
        } else {
            union[a] += 1;
            union[r] += 1;
        }
    }
    let ious: Vec<f64> = (0..256)
        .filter(|&c| union[c] > 0)
        .map(|c| inter[c] as f64 / union[c] as f64)
        .collect();
    ious.iter().sum::<f64>() / ious.len().max(1) as f64
}

/// A scene's semantic map drawn at another size (nearest pixel), for judging images made
/// larger than the data's.
pub fn resize_map(map: &GrayImage, side: u32) -> GrayImage {
    image::imageops::resize(map, side, side, image::imageops::FilterType::Nearest)
}
