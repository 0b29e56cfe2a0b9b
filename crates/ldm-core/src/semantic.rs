//! Semantic maps as a UNet input (paper 4.3.2): a map of class ids at the image's size
//! becomes one channel per class at the latent's size, each cell holding the share of its
//! f x f pixels that the map gives the class. Training (tch) and every engine build the
//! input here, so they agree exactly.

use thiserror::Error;

/// Class ids are 8-bit (a grayscale PNG), so a map names at most this many classes.
pub const MAX_CLASSES: usize = 256;

/// A map of class ids, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassMap {
    pub width: usize,
    pub height: usize,
    pub ids: Vec<u8>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SemanticError {
    #[error("the semantic map holds {got} ids for {width}x{height} pixels")]
    Length {
        got: usize,
        width: usize,
        height: usize,
    },
    #[error("the semantic map's {width}x{height} pixels do not divide into {f}x{f} latent cells")]
    NotMultiple {
        width: usize,
        height: usize,
        f: usize,
    },
    #[error("the semantic map's pixel ({x}, {y}) has class id {id}, but the model knows ids 0 to {}", classes - 1)]
    UnknownClass {
        x: usize,
        y: usize,
        id: u8,
        classes: usize,
    },
}

impl ClassMap {
    /// The `side` x `side` pixels whose top-left corner is (`x`, `y`); None where they do not
    /// lie inside the map.
    pub fn window(&self, x: usize, y: usize, side: usize) -> Option<ClassMap> {
        if x + side > self.width || y + side > self.height {
            return None;
        }
        let ids = (y..y + side)
            .flat_map(|row| &self.ids[row * self.width + x..row * self.width + x + side])
            .copied()
            .collect();
        Some(ClassMap {
            width: side,
            height: side,
            ids,
        })
    }

    /// Refuses a map whose ids do not fill its sides, whose sides are not multiples of `f`,
    /// or that names a class the model does not know.
    pub fn check(&self, classes: usize, f: usize) -> Result<(), SemanticError> {
        let (w, h) = (self.width, self.height);
        if self.ids.len() != w * h {
            return Err(SemanticError::Length {
                got: self.ids.len(),
                width: w,
                height: h,
            });
        }
        if f == 0 || w == 0 || h == 0 || !w.is_multiple_of(f) || !h.is_multiple_of(f) {
            return Err(SemanticError::NotMultiple {
                width: w,
                height: h,
                f,
            });
        }
        match self.ids.iter().position(|&id| id as usize >= classes) {
            Some(i) => Err(SemanticError::UnknownClass {
                x: i % w,
                y: i / w,
                id: self.ids[i],
                classes,
            }),
            None => Ok(()),
        }
    }
}

/// The UNet's `concat` input of one map: `classes` x (height / f) x (width / f), planar.
pub fn class_shares(map: &ClassMap, classes: usize, f: usize) -> Result<Vec<f32>, SemanticError> {
    map.check(classes, f)?;
    let (w, lw, lh) = (map.width, map.width / f, map.height / f);
    let mut shares = vec![0f32; classes * lw * lh];
    let share = 1.0 / (f * f) as f32;
    for (i, &id) in map.ids.iter().enumerate() {
        let (x, y) = (i % w, i / w);
        shares[(id as usize * lh + y / f) * lw + x / f] += share;
    }
    Ok(shares)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_holds_its_pixels_and_stays_inside_the_map() {
        let map = ClassMap {
            width: 3,
            height: 3,
            ids: (0..9).collect(),
        };
        assert_eq!(map.window(1, 1, 2).unwrap().ids, [4, 5, 7, 8]);
        assert_eq!(map.window(0, 0, 3).unwrap(), map);
        assert!(map.window(2, 0, 2).is_none());
    }

    #[test]
    fn shares_sum_to_one_per_cell_and_count_pixels() {
        // 4x2 pixels, f = 2: two cells; the left one half class 1, the right all class 2.
        let map = ClassMap {
            width: 4,
            height: 2,
            ids: vec![0, 1, 2, 2, 1, 0, 2, 2],
        };
        let s = class_shares(&map, 3, 2).unwrap();
        assert_eq!(s, vec![0.5, 0.0, 0.5, 0.0, 0.0, 1.0]);
        let err = class_shares(&map, 2, 2).unwrap_err().to_string();
        assert_eq!(
            err,
            "the semantic map's pixel (2, 0) has class id 2, but the model knows ids 0 to 1"
        );
        assert!(matches!(
            class_shares(&map, 3, 3),
            Err(SemanticError::NotMultiple { .. })
        ));
    }
}
