//! Distances between two sets of feature vectors: real (held-out) against generated.
//!
//! - FID (Heusel et al. 2017): the Fréchet distance of Gaussians fitted to each set.
//! - KID (Bińkowski et al. 2018): the unbiased squared MMD with the cubic polynomial kernel
//!   k(x, y) = (x·y / d + 1)^3, averaged over random subsets; unbiased, so usable on the
//!   few hundred images a small validation split has.
//! - Precision and recall (Kynkäänniemi et al. 2019): the share of generated samples inside
//!   the real set's k-nearest-neighbour balls, and the reverse.
//!
//! The figures depend on the feature network: compare them only between runs measured with
//! the same one.

use nalgebra::{DMatrix, DVector, SymmetricEigen};
use rand::seq::index::sample;
use rand::SeedableRng;

/// Sets that cannot be compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetError {
    TooFew {
        set: &'static str,
        have: usize,
        need: usize,
    },
    Dimensions {
        real: usize,
        generated: usize,
    },
    Ragged {
        set: &'static str,
    },
}

impl std::fmt::Display for SetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SetError::TooFew { set, have, need } => {
                write!(
                    f,
                    "the {set} set has {have} feature vectors; this metric needs at least {need}"
                )
            }
            SetError::Dimensions { real, generated } => write!(
                f,
                "real features have {real} dimensions but generated ones have {generated}"
            ),
            SetError::Ragged { set } => write!(f, "the {set} feature vectors differ in length"),
        }
    }
}

impl std::error::Error for SetError {}

/// Checks both sets and returns them as matrices with one sample per row.
fn matrices(
    real: &[Vec<f32>],
    generated: &[Vec<f32>],
    need: usize,
) -> Result<(DMatrix<f64>, DMatrix<f64>), SetError> {
    let matrix = |set: &'static str, rows: &[Vec<f32>]| {
        if rows.len() < need {
            return Err(SetError::TooFew {
                set,
                have: rows.len(),
                need,
            });
        }
        let d = rows[0].len();
        if rows.iter().any(|r| r.len() != d) {
            return Err(SetError::Ragged { set });
        }
        Ok(DMatrix::from_fn(rows.len(), d, |i, j| rows[i][j] as f64))
    };
    let (a, b) = (matrix("real", real)?, matrix("generated", generated)?);
    if a.ncols() != b.ncols() {
        return Err(SetError::Dimensions {
            real: a.ncols(),
            generated: b.ncols(),
        });
    }
    Ok((a, b))
}

/// Mean and (unbiased) covariance of the rows.
fn gaussian(rows: &DMatrix<f64>) -> (DVector<f64>, DMatrix<f64>) {
    let n = rows.nrows() as f64;
    let mean = rows.row_mean().transpose();
    let mut centred = rows.clone();
    for mut row in centred.row_iter_mut() {
        row -= mean.transpose();
    }
    let cov = centred.transpose() * &centred / (n - 1.0);
    (mean, cov)
}

/// The square root of a symmetric positive semi-definite matrix (tiny negative eigenvalues
/// from rounding are taken as 0).
fn sqrt_psd(m: DMatrix<f64>) -> DMatrix<f64> {
    let eigen = SymmetricEigen::new(m);
    let roots = eigen.eigenvalues.map(|v| v.max(0.0).sqrt());
    &eigen.eigenvectors * DMatrix::from_diagonal(&roots) * eigen.eigenvectors.transpose()
}

/// Fréchet Inception-style distance: |mu_r - mu_g|^2 + tr(S_r + S_g - 2 (S_r S_g)^1/2).
pub fn fid(real: &[Vec<f32>], generated: &[Vec<f32>]) -> Result<f64, SetError> {
    let (a, b) = matrices(real, generated, 2)?;
    let (mu_a, cov_a) = gaussian(&a);
    let (mu_b, cov_b) = gaussian(&b);
    // tr (S_a S_b)^1/2 = tr (S_a^1/2 S_b S_a^1/2)^1/2, whose argument is symmetric PSD.
    let root_a = sqrt_psd(cov_a.clone());
    let inner = &root_a * &cov_b * &root_a;
    let inner = (&inner + inner.transpose()) * 0.5;
    let cross: f64 = SymmetricEigen::new(inner)
        .eigenvalues
        .iter()
        .map(|v| v.max(0.0).sqrt())
        .sum();
    let distance = (mu_a - mu_b).norm_squared() + cov_a.trace() + cov_b.trace() - 2.0 * cross;
    Ok(distance.max(0.0))
}

/// KID: mean and standard deviation over subsets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Kid {
    pub mean: f64,
    pub std: f64,
}

/// KID over `subsets` random subsets of `subset_size` rows of each set (capped at the smaller
/// set's size), drawn from `seed`.
pub fn kid(
    real: &[Vec<f32>],
    generated: &[Vec<f32>],
    subsets: usize,
    subset_size: usize,
    seed: u64,
) -> Result<Kid, SetError> {
    let (a, b) = matrices(real, generated, 2)?;
    let m = subset_size.min(a.nrows()).min(b.nrows());
    let d = a.ncols() as f64;
    let kernel =
        |x: &DMatrix<f64>, y: &DMatrix<f64>| (x * y.transpose()).map(|v| (v / d + 1.0).powi(3));
    let off_diagonal_mean = |k: &DMatrix<f64>| (k.sum() - k.trace()) / (m * (m - 1)) as f64;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut values = Vec::with_capacity(subsets.max(1));
    for _ in 0..subsets.max(1) {
        let x = a.select_rows(sample(&mut rng, a.nrows(), m).into_vec().iter());
        let y = b.select_rows(sample(&mut rng, b.nrows(), m).into_vec().iter());
        let mmd = off_diagonal_mean(&kernel(&x, &x)) + off_diagonal_mean(&kernel(&y, &y))
            - 2.0 * kernel(&x, &y).mean();
        values.push(mmd);
    }
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64;
    Ok(Kid {
        mean,
        std: var.sqrt(),
    })
}

/// Improved precision and recall, in [0, 1].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrecisionRecall {
    pub precision: f64,
    pub recall: f64,
}

/// Precision and recall with k-nearest-neighbour balls (the authors use k = 3).
pub fn precision_recall(
    real: &[Vec<f32>],
    generated: &[Vec<f32>],
    k: usize,
) -> Result<PrecisionRecall, SetError> {
    let (a, b) = matrices(real, generated, k + 1)?;
    let (ra, rb) = (knn_radii(&a, k), knn_radii(&b, k));
    Ok(PrecisionRecall {
        precision: coverage(&b, &a, &ra),
        recall: coverage(&a, &b, &rb),
    })
}

/// Squared distances between every row of `x` and every row of `y`.
fn squared_distances(x: &DMatrix<f64>, y: &DMatrix<f64>) -> DMatrix<f64> {
    let (nx, ny) = (
        x.row_iter().map(|r| r.norm_squared()).collect::<Vec<_>>(),
        y.row_iter().map(|r| r.norm_squared()).collect::<Vec<_>>(),
    );
    let dots = x * y.transpose();
    DMatrix::from_fn(x.nrows(), y.nrows(), |i, j| {
        (nx[i] + ny[j] - 2.0 * dots[(i, j)]).max(0.0)
    })
}

/// Squared distance of each row to its k-th nearest other row.
fn knn_radii(set: &DMatrix<f64>, k: usize) -> Vec<f64> {
    let d = squared_distances(set, set);
    (0..set.nrows())
        .map(|i| {
            let mut row: Vec<f64> = d.row(i).iter().copied().collect();
            row.sort_by(f64::total_cmp);
            // row[0] is the point itself.
            row[k]
        })
        .collect()
}

/// The share of `samples` within the k-NN ball of at least one row of `manifold`.
fn coverage(samples: &DMatrix<f64>, manifold: &DMatrix<f64>, radii: &[f64]) -> f64 {
    let d = squared_distances(samples, manifold);
    let inside = (0..samples.nrows())
        .filter(|&i| (0..manifold.nrows()).any(|j| d[(i, j)] <= radii[j]))
        .count();
    inside as f64 / samples.nrows() as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_distr::{Distribution, StandardNormal};

    fn gaussian_set(n: usize, d: usize, shift: f32, seed: u64) -> Vec<Vec<f32>> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                (0..d)
                    .map(|_| {
                        let v: f32 = StandardNormal.sample(&mut rng);
                        v + shift
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn fid_of_a_set_with_itself_is_zero_and_grows_with_a_shift() {
        let a = gaussian_set(2000, 8, 0.0, 0);
        assert!(fid(&a, &a).unwrap() < 1e-6);
        // Two samples of one Gaussian: only sampling noise.
        let same = fid(&a, &gaussian_set(2000, 8, 0.0, 1)).unwrap();
        assert!(same < 0.1, "{same}");
        // A mean shift of 1 in each of 8 dimensions adds |mu|^2 = 8.
        let shifted = fid(&a, &gaussian_set(2000, 8, 1.0, 1)).unwrap();
        assert!((shifted - 8.0).abs() < 0.5, "{shifted}");
        let further = fid(&a, &gaussian_set(2000, 8, 2.0, 1)).unwrap();
        assert!(further > shifted);
    }

    #[test]
    fn fid_of_scaled_covariances_matches_the_closed_form() {
        // N(0, I) against N(0, 4 I) in d dimensions: d (1 + 4 - 2 * 2) = d.
        let a = gaussian_set(4000, 4, 0.0, 2);
        let b: Vec<Vec<f32>> = gaussian_set(4000, 4, 0.0, 3)
            .into_iter()
            .map(|r| r.into_iter().map(|v| 2.0 * v).collect())
            .collect();
        let distance = fid(&a, &b).unwrap();
        assert!((distance - 4.0).abs() < 0.4, "{distance}");
    }

    #[test]
    fn kid_is_near_zero_for_one_distribution_and_positive_for_a_shift() {
        let a = gaussian_set(400, 8, 0.0, 4);
        let same = kid(&a, &gaussian_set(400, 8, 0.0, 5), 20, 200, 0).unwrap();
        assert!(same.mean.abs() < 0.05, "{same:?}");
        let shifted = kid(&a, &gaussian_set(400, 8, 1.0, 5), 20, 200, 0).unwrap();
        assert!(
            shifted.mean > 10.0 * same.mean.abs().max(0.01),
            "{shifted:?}"
        );
    }

    #[test]
    fn precision_and_recall_see_overlap_and_mode_dropping() {
        let real = gaussian_set(500, 4, 0.0, 6);
        let same = precision_recall(&real, &real, 3).unwrap();
        assert_eq!(
            same,
            PrecisionRecall {
                precision: 1.0,
                recall: 1.0
            }
        );
        // Generated samples packed into a small region of the real support: precise but
        // covering little of it.
        let collapsed: Vec<Vec<f32>> = gaussian_set(500, 4, 0.0, 7)
            .into_iter()
            .map(|r| r.into_iter().map(|v| 0.1 * v).collect())
            .collect();
        let pr = precision_recall(&real, &collapsed, 3).unwrap();
        assert!(pr.precision > 0.9 && pr.recall < 0.3, "{pr:?}");
        let far = gaussian_set(500, 4, 20.0, 8);
        let pr = precision_recall(&real, &far, 3).unwrap();
        assert_eq!(
            pr,
            PrecisionRecall {
                precision: 0.0,
                recall: 0.0
            }
        );
    }

    #[test]
    fn mismatched_sets_are_refused_by_name() {
        let a = gaussian_set(10, 4, 0.0, 0);
        let b = gaussian_set(10, 5, 0.0, 0);
        assert_eq!(
            fid(&a, &b).unwrap_err(),
            SetError::Dimensions {
                real: 4,
                generated: 5
            }
        );
        assert_eq!(
            fid(&a[..1], &a).unwrap_err().to_string(),
            "the real set has 1 feature vectors; this metric needs at least 2"
        );
    }
}
