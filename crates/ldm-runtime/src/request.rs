//! What a caller asks of a pipeline: the [`Generate`] request, and the [`Image`]s and
//! [`Progress`] reports it gets back.

use ldm_core::semantic::ClassMap;
use ldm_core::SamplerKind;

use crate::plan::MAX_IMAGES;
use crate::RequestError;

/// What to generate. Built with [`Generate::new`] and its setters; unset values take the
/// bundle's defaults.
#[derive(Debug, Clone)]
pub struct Generate {
    /// One image per prompt: a caption (text models), a class name or id (class models),
    /// ignored by unconditional models.
    pub prompts: Vec<String>,
    /// The prompt guidance steers away from (text models; empty: the unconditional context).
    pub negative_prompt: String,
    /// The sampler (default: the bundle's); DDIM's eta is `eta`.
    pub sampler: Option<SamplerKind>,
    pub steps: Option<usize>,
    pub guidance: Option<f64>,
    pub eta: Option<f64>,
    /// Image i uses seed + i, so an image does not depend on the others in its batch.
    pub seed: u64,
    /// Image width and height in pixels, each a multiple of the manifest's `size_multiple`:
    /// the input image's size when there is one (f times it for super-resolution), else the
    /// training resolution. Larger sizes sample convolutionally (paper Fig. 9).
    pub width: Option<usize>,
    pub height: Option<usize>,
    /// Image-to-image (SDEdit, Meng et al. 2022) and inpainting start from this image, of the
    /// output size; super-resolution bundles upsample it (its sides times f).
    pub init_image: Option<Image>,
    /// How much of the sampling image-to-image redoes: 1 starts from pure noise, 0 returns
    /// the image (default 0.75; inpainting 1).
    pub strength: Option<f64>,
    /// Inpainting: white where to draw, black where `init_image` stays. Works with any
    /// bundle (the known region is blended back after every step, Sec. 4.5 of the paper's
    /// baseline) and feeds the mask channels of inpainting bundles.
    pub mask: Option<Image>,
    /// Semantic-map bundles draw what this map of class ids shows (paper 4.3.2); the output
    /// takes its size unless one is asked, and larger maps sample convolutionally.
    pub semantic_map: Option<ClassMap>,
}

impl Generate {
    pub fn new(prompts: Vec<String>) -> Self {
        Self {
            prompts,
            negative_prompt: String::new(),
            sampler: None,
            steps: None,
            guidance: None,
            eta: None,
            seed: 0,
            width: None,
            height: None,
            init_image: None,
            strength: None,
            mask: None,
            semantic_map: None,
        }
    }
    /// `count` images of one prompt (image i with seed + i), refused before anything is
    /// allocated when `count` is 0 or above [`crate::plan::MAX_IMAGES`].
    pub fn repeated(prompt: &str, count: usize) -> Result<Self, RequestError> {
        match count {
            0 => Err(RequestError::NoPrompts),
            n if n > MAX_IMAGES => Err(RequestError::TooManyImages {
                asked: n,
                max: MAX_IMAGES,
            }),
            n => Ok(Self::new(vec![prompt.to_string(); n])),
        }
    }

    pub fn sampler(mut self, sampler: SamplerKind) -> Self {
        self.sampler = Some(sampler);
        self
    }
    pub fn steps(mut self, steps: usize) -> Self {
        self.steps = Some(steps);
        self
    }
    pub fn guidance(mut self, guidance: f64) -> Self {
        self.guidance = Some(guidance);
        self
    }
    pub fn eta(mut self, eta: f64) -> Self {
        self.eta = Some(eta);
        self
    }
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
    /// A square image of `side` pixels.
    pub fn size(self, side: usize) -> Self {
        self.dimensions(side, side)
    }
    pub fn dimensions(mut self, width: usize, height: usize) -> Self {
        self.width = Some(width);
        self.height = Some(height);
        self
    }
    pub fn init_image(mut self, image: Image, strength: f64) -> Self {
        self.init_image = Some(image);
        self.strength = Some(strength);
        self
    }
    pub fn mask(mut self, mask: Image) -> Self {
        self.mask = Some(mask);
        self
    }
    pub fn negative_prompt(mut self, prompt: &str) -> Self {
        self.negative_prompt = prompt.into();
        self
    }
}

/// Where a generation stands after a step.
#[derive(Debug, Clone, Copy)]
pub struct Progress<'a> {
    /// Steps done, 1 to `total`.
    pub step: usize,
    pub total: usize,
    /// The batch's latents [N, c, h, w] after this step, in the sampler's parametrisation.
    pub latents: &'a [f32],
}

/// An 8-bit RGB image, rows top to bottom.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
}
