//! What a manifest must satisfy beyond its field types, before a runtime trusts it: a known
//! format, the graphs its model needs, file names that stay in the bundle, every number that
//! sizes work or memory bounded, and every dimension it states agreeing with the graphs' inputs
//! and outputs.

use super::{
    BundleConditioning, ConcatKind, DimSpec, FirstStage, GraphRole, GraphSpec, Manifest, Schedule,
    MANIFEST_FORMAT,
};
use crate::semantic::MAX_CLASSES as MAX_MAP_CLASSES;

/// Bounds of the numbers that size work and memory: far above any model served here, far
/// below what would exhaust a machine before the request plan's estimate is consulted.
const MAX_SIDE: usize = 4096;
const MAX_CHANNELS: usize = 1024;
const MAX_TOKENS: usize = 4096;
const MAX_VOCABULARY: usize = 1 << 22;
const MAX_CLASSES: usize = 1 << 20;
const MAX_TIMESTEPS: usize = 100_000;

impl Manifest {
    /// The consistency a runtime relies on beyond field types.
    pub(super) fn validate(&self) -> Result<(), String> {
        if self.format != MANIFEST_FORMAT {
            return Err(format!("format {} is not {MANIFEST_FORMAT}", self.format));
        }
        let factor = self.downsampling_factor;
        if !factor.is_power_of_two() || factor > 64 {
            return Err(format!(
                "downsampling_factor {factor} is not a power of two up to 64"
            ));
        }
        if self.resolution == 0 || !self.resolution.is_multiple_of(factor) {
            return Err(format!(
                "resolution {} is not a multiple of downsampling_factor {factor}",
                self.resolution
            ));
        }
        if self.size_multiple == 0 || !self.size_multiple.is_multiple_of(factor) {
            return Err(format!(
                "size_multiple {} is not a multiple of downsampling_factor {factor}",
                self.size_multiple
            ));
        }
        if !(self.latent_scale_factor.is_finite() && self.latent_scale_factor > 0.0) {
            return Err(format!(
                "latent_scale_factor {} is not a positive number",
                self.latent_scale_factor
            ));
        }
        self.schedule.noise_schedule().map_err(|e| e.to_string())?;
        if let Some(sliced) = self.sliced_attention {
            if sliced.chunk == 0 || sliced.chunk > MAX_SIDE * MAX_SIDE {
                return Err(format!(
                    "sliced_attention.chunk {} is not between 1 and {}",
                    sliced.chunk,
                    MAX_SIDE * MAX_SIDE
                ));
            }
        }
        let mut required = vec![GraphRole::Unet];
        if self.first_stage != FirstStage::Identity {
            required.extend([GraphRole::Encoder, GraphRole::Decoder]);
        }
        match &self.conditioning {
            BundleConditioning::Text {
                layout, planner, ..
            } => {
                required.push(GraphRole::TextEncoder);
                if planner.is_some() {
                    if layout.is_none() {
                        return Err(
                            "conditioning.planner plans layouts: it needs conditioning.layout"
                                .into(),
                        );
                    }
                    required.push(GraphRole::Planner);
                }
            }
            BundleConditioning::Class {
                classes,
                class_names,
            } => {
                required.push(GraphRole::ClassEmbedder);
                if !class_names.is_empty() && class_names.len() != *classes {
                    return Err(format!(
                        "{} class_names for {classes} classes",
                        class_names.len()
                    ));
                }
            }
            BundleConditioning::None | BundleConditioning::Concat { .. } => {}
        }
        for role in required {
            if !self.graphs.contains_key(&role) {
                return Err(format!("no `{}` graph", role.as_str()));
            }
        }
        for (role, graph) in &self.graphs {
            // Plain relative file names only: a manifest must not point outside its bundle.
            if !crate::confined::is_plain_relative(&graph.file) || graph.file.contains('/') {
                return Err(format!(
                    "graph `{}` file {:?} is not a plain file name",
                    role.as_str(),
                    graph.file
                ));
            }
        }
        if let BundleConditioning::Text {
            tokenizer, planner, ..
        } = &self.conditioning
        {
            let planner = planner
                .as_ref()
                .map(|p| ("planner.tokenizer", &p.tokenizer));
            for (field, file) in [("tokenizer", tokenizer)].into_iter().chain(planner) {
                if !crate::confined::is_plain_relative(file) || file.contains('/') {
                    return Err(format!(
                        "conditioning.{field} {file:?} is not a plain file name"
                    ));
                }
            }
        }
        if let Some(concat) = self.conditioning.concat() {
            let needed = match concat.task {
                ConcatKind::SuperResolution => self.image_channels,
                ConcatKind::Inpainting | ConcatKind::MaskFirstInpainting => {
                    self.latent_channels + 1
                }
                // One channel per class; any count the maps' 8-bit ids can name.
                ConcatKind::SemanticMap => concat.channels.clamp(2, MAX_MAP_CLASSES),
            };
            if concat.channels != needed {
                return Err(format!(
                    "conditioning.channels = {} but {:?} takes {needed}",
                    concat.channels, concat.task
                ));
            }
        }
        self.check_bounds()?;
        self.check_dimensions()
    }

    /// Every number that sizes work or memory, within bounds.
    fn check_bounds(&self) -> Result<(), String> {
        let mut bounded = vec![
            ("resolution", self.resolution, MAX_SIDE),
            ("size_multiple", self.size_multiple, MAX_SIDE),
            ("image_channels", self.image_channels, MAX_CHANNELS),
            ("latent_channels", self.latent_channels, MAX_CHANNELS),
            ("defaults.steps", self.defaults.steps, MAX_TIMESTEPS),
        ];
        let Schedule::Linear(linear) = &self.schedule;
        bounded.push(("schedule.timesteps", linear.timesteps, MAX_TIMESTEPS));
        match &self.conditioning {
            BundleConditioning::Text {
                max_length,
                vocab_size,
                layout,
                ..
            } => {
                if let Some(layout) = layout {
                    layout
                        .validate()
                        .map_err(|e| format!("conditioning.layout: {e}"))?;
                    if layout.max_length() != *max_length {
                        return Err(format!(
                            "conditioning.max_length = {max_length}, but its layouts take {} tokens",
                            layout.max_length()
                        ));
                    }
                }
                bounded.push(("conditioning.max_length", *max_length, MAX_TOKENS));
                bounded.push(("conditioning.vocab_size", *vocab_size, MAX_VOCABULARY));
                if let Some(planner) = self.conditioning.planner() {
                    bounded.push((
                        "conditioning.planner.max_length",
                        planner.max_length,
                        MAX_TOKENS,
                    ));
                    bounded.push((
                        "conditioning.planner.vocab_size",
                        planner.vocab_size,
                        MAX_VOCABULARY,
                    ));
                }
            }
            BundleConditioning::Class { classes, .. } => {
                bounded.push(("conditioning.classes", *classes, MAX_CLASSES));
            }
            BundleConditioning::Concat { .. } | BundleConditioning::None => {}
        }
        if let Some(concat) = self.conditioning.concat() {
            bounded.push(("conditioning.channels", concat.channels, MAX_CHANNELS));
        }
        for (field, value, max) in bounded {
            if !(1..=max).contains(&value) {
                return Err(format!("{field} = {value} is not within 1..={max}"));
            }
        }
        if self.defaults.steps > linear.timesteps {
            return Err(format!(
                "defaults.steps = {} is above schedule.timesteps = {}",
                self.defaults.steps, linear.timesteps
            ));
        }
        if !self.defaults.guidance.is_finite() || !(0.0..=1.0).contains(&self.defaults.eta) {
            return Err(format!(
                "defaults.guidance = {} must be a number and defaults.eta = {} within 0..1",
                self.defaults.guidance, self.defaults.eta
            ));
        }
        for spec in self.graphs.values() {
            for tensor in spec.inputs.iter().chain(&spec.outputs) {
                for dim in &tensor.shape {
                    if let DimSpec::Fixed(n) = dim {
                        if !(1..=MAX_SIDE.max(MAX_VOCABULARY)).contains(n) {
                            return Err(format!(
                                "graph input/output '{}' has a dimension of {n}",
                                tensor.name
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Every dimension the manifest states at its top level against the graphs' inputs and
    /// outputs that carry it, so that a disagreement names the manifest field, not an engine's
    /// node.
    fn check_dimensions(&self) -> Result<(), String> {
        let c = self.latent_channels;
        let mut expected: Vec<(GraphRole, &str, usize, usize, &str)> = vec![
            (GraphRole::Unet, "sample", 1, c, "latent_channels"),
            (GraphRole::Unet, "eps", 1, c, "latent_channels"),
        ];
        if self.first_stage != FirstStage::Identity {
            let moments = match self.first_stage {
                FirstStage::Kl => ("moments", 2 * c),
                _ => ("latent", c),
            };
            expected.extend([
                (
                    GraphRole::Encoder,
                    "image",
                    1,
                    self.image_channels,
                    "image_channels",
                ),
                (
                    GraphRole::Encoder,
                    moments.0,
                    1,
                    moments.1,
                    "latent_channels",
                ),
                (GraphRole::Decoder, "latent", 1, c, "latent_channels"),
                (
                    GraphRole::Decoder,
                    "image",
                    1,
                    self.image_channels,
                    "image_channels",
                ),
            ]);
        }
        match &self.conditioning {
            BundleConditioning::Text { max_length, .. } => expected.extend([
                (
                    GraphRole::TextEncoder,
                    "input_ids",
                    1,
                    *max_length,
                    "conditioning.max_length",
                ),
                (
                    GraphRole::TextEncoder,
                    "context",
                    1,
                    *max_length,
                    "conditioning.max_length",
                ),
                (
                    GraphRole::Unet,
                    "context",
                    1,
                    *max_length,
                    "conditioning.max_length",
                ),
            ]),
            BundleConditioning::Class { .. } => expected.push((
                GraphRole::Unet,
                "context",
                1,
                1,
                "a class model's context length",
            )),
            BundleConditioning::Concat { .. } | BundleConditioning::None => {}
        }
        if let (Some(planner), Some(layout)) =
            (self.conditioning.planner(), self.conditioning.layout())
        {
            let slots = crate::layout_plan::SlotScores::of(layout).width();
            expected.extend([
                (
                    GraphRole::Planner,
                    "caption_ids",
                    1,
                    planner.max_length,
                    "conditioning.planner.max_length",
                ),
                (
                    GraphRole::Planner,
                    "scores",
                    1,
                    layout.max_objects,
                    "conditioning.layout.max_objects",
                ),
                (
                    GraphRole::Planner,
                    "scores",
                    2,
                    slots,
                    "the layout's scores per slot",
                ),
            ]);
        }
        if let Some(concat) = self.conditioning.concat() {
            expected.push((
                GraphRole::Unet,
                "concat",
                1,
                concat.channels,
                "conditioning.channels",
            ));
        }
        for (role, name, axis, value, field) in expected {
            let spec = self.graphs.get(&role).expect("required graphs are present");
            let tensor = spec
                .inputs
                .iter()
                .chain(&spec.outputs)
                .find(|t| t.name == name)
                .ok_or_else(|| {
                    format!(
                        "the `{}` graph has no input or output '{name}'",
                        role.as_str()
                    )
                })?;
            match tensor.shape.get(axis) {
                Some(DimSpec::Fixed(n)) if *n == value => {}
                other => {
                    return Err(format!(
                        "{field} = {value} but the `{}` graph's '{name}' has {} along axis {axis}",
                        role.as_str(),
                        other.map_or("no dimension".into(), |d| match d {
                            DimSpec::Fixed(n) => n.to_string(),
                            DimSpec::Symbol(s) => format!("'{s}'"),
                        })
                    ))
                }
            }
        }
        // The context width the conditioner produces is the one the UNet reads.
        if let Some(conditioner) = [GraphRole::TextEncoder, GraphRole::ClassEmbedder]
            .into_iter()
            .find_map(|r| self.graphs.get(&r).map(|g| (r, g)))
        {
            let width = |spec: &GraphSpec| {
                spec.inputs
                    .iter()
                    .chain(&spec.outputs)
                    .find(|t| t.name == "context")
                    .and_then(|t| t.shape.get(2).cloned())
            };
            let unet = self.graphs.get(&GraphRole::Unet).expect("required");
            if width(conditioner.1) != width(unet) {
                return Err(format!(
                    "the `{}` graph's context width {:?} is not the `unet` graph's {:?}",
                    conditioner.0.as_str(),
                    width(conditioner.1),
                    width(unet)
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> serde_json::Value {
        serde_json::json!({
            "format": 1,
            "name": "tiny",
            "precision": "f32",
            "resolution": 16,
            "size_multiple": 4,
            "image_channels": 3,
            "first_stage": "identity",
            "latent_channels": 3,
            "downsampling_factor": 1,
            "latent_scale_factor": 1.0,
            "conditioning": {"kind": "none"},
            "schedule": {"kind": "linear", "timesteps": 100, "beta_start": 0.0015, "beta_end": 0.0195},
            "defaults": {"sampler": "ddim", "steps": 10, "guidance": 1.0, "eta": 0.0},
            "graphs": {"unet": {
                "file": "unet.onnx",
                "inputs": [{"name": "sample", "dtype": "float32", "shape": ["batch", 3, "height", "width"]}],
                "outputs": [{"name": "eps", "dtype": "float32", "shape": ["batch", 3, "height", "width"]}]
            }}
        })
    }

    /// Refuses the minimal manifest edited by `edit` with a message containing `expect`.
    fn refuse(edit: &dyn Fn(&mut serde_json::Value), expect: &str) {
        let mut v = minimal();
        edit(&mut v);
        let err = Manifest::parse(&v.to_string()).unwrap_err().to_string();
        assert!(err.contains(expect), "{err} (expected {expect})");
    }

    #[test]
    fn a_minimal_manifest_round_trips() {
        let m = Manifest::parse(&minimal().to_string()).unwrap();
        assert_eq!(
            m.graphs[&GraphRole::Unet].inputs[0].shape[1],
            DimSpec::Fixed(3)
        );
        let again = Manifest::parse(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(m, again);
    }

    #[test]
    fn newer_missing_unknown_and_inconsistent_are_refused() {
        refuse(&|v| v["format"] = 2.into(), "bundle format 2 is newer");
        refuse(
            &|v| {
                v.as_object_mut().unwrap().remove("latent_scale_factor");
            },
            "missing field `latent_scale_factor`",
        );
        refuse(&|v| v["colour"] = "red".into(), "unknown field `colour`");
        refuse(
            &|v| v["schedule"]["offset"] = 1.into(),
            "unknown field `offset`",
        );
        refuse(
            &|v| v["schedule"]["kind"] = "cosine".into(),
            "unknown variant `cosine`",
        );
        refuse(&|v| v["first_stage"] = "kl".into(), "no `encoder` graph");
        refuse(
            &|v| v["downsampling_factor"] = 3.into(),
            "not a power of two",
        );
        refuse(
            &|v| v["latent_scale_factor"] = (-1.0).into(),
            "not a positive number",
        );
        refuse(
            &|v| v["graphs"]["unet"]["file"] = "../unet.onnx".into(),
            "not a plain file name",
        );
        for file in ["/etc/passwd", "sub/unet.onnx", "", "..", "a\\b"] {
            refuse(
                &|v| v["graphs"]["unet"]["file"] = file.into(),
                "not a plain file name",
            );
        }
    }

    #[test]
    fn numbers_that_size_work_are_bounded_and_dimensions_agree_with_the_graphs() {
        // A top-level number that disagrees with the graph names the field.
        refuse(
            &|v| v["latent_channels"] = 7.into(),
            "latent_channels = 7 but the `unet` graph's 'sample' has 3 along axis 1",
        );
        refuse(
            &|v| v["graphs"]["unet"]["outputs"][0]["shape"][1] = 4.into(),
            "latent_channels = 3 but the `unet` graph's 'eps' has 4",
        );
        refuse(
            &|v| v["graphs"]["unet"]["inputs"][0]["shape"][1] = "channels".into(),
            "has 'channels' along axis 1",
        );
        for (field, value) in [
            ("resolution", 1u64 << 40),
            ("size_multiple", 1 << 30),
            ("latent_channels", 1 << 40),
            ("image_channels", 0),
        ] {
            refuse(&|v| v[field] = value.into(), field);
        }
        refuse(
            &|v| v["schedule"]["timesteps"] = (1u64 << 40).into(),
            "1099511627776 timesteps (expected 2 to 100000)",
        );
        refuse(
            &|v| v["defaults"]["steps"] = 1000.into(),
            "defaults.steps = 1000 is above",
        );
        refuse(&|v| v["defaults"]["eta"] = 5.into(), "defaults.eta = 5");
        refuse(
            &|v| v["graphs"]["unet"]["inputs"][0]["shape"][2] = (1u64 << 40).into(),
            "has a dimension of",
        );
        fn text<'a>(
            edit: &'a dyn Fn(&mut serde_json::Value),
        ) -> impl Fn(&mut serde_json::Value) + 'a {
            move |v: &mut serde_json::Value| {
                v["conditioning"] = serde_json::json!({
                    "kind": "text", "tokenizer": "tokenizer.json", "max_length": 8, "vocab_size": 100
                });
                v["graphs"]["text_encoder"] = serde_json::json!({
                    "file": "text_encoder.onnx",
                    "inputs": [{"name": "input_ids", "dtype": "int64", "shape": ["batch", 8]}],
                    "outputs": [{"name": "context", "dtype": "float32", "shape": ["batch", 8, 32]}]
                });
                v["graphs"]["unet"]["inputs"]
                    .as_array_mut()
                    .unwrap()
                    .push(serde_json::json!(
                        {"name": "context", "dtype": "float32", "shape": ["batch", 8, 32]}
                    ));
                edit(v);
            }
        }
        let mut v = minimal();
        text(&|_| {})(&mut v);
        Manifest::parse(&v.to_string()).unwrap();
        refuse(
            &text(&|v| v["conditioning"]["tokenizer"] = "../../home/tokenizer.json".into()),
            "conditioning.tokenizer \"../../home/tokenizer.json\" is not a plain file name",
        );
        refuse(
            &text(&|v| v["conditioning"]["max_length"] = 9.into()),
            "conditioning.max_length = 9 but the `text_encoder` graph's 'input_ids' has 8",
        );
        refuse(
            &text(&|v| v["conditioning"]["max_length"] = (1u64 << 40).into()),
            "conditioning.max_length",
        );
        refuse(
            &text(&|v| v["conditioning"]["vocab_size"] = (1u64 << 40).into()),
            "conditioning.vocab_size",
        );
        refuse(
            &text(&|v| v["graphs"]["unet"]["inputs"][1]["shape"][2] = 64.into()),
            "context width",
        );
        // A layout model of one object (class "star", colour "red", a 2-step grid: 8 ids,
        // 8 tokens) with a planner whose scores are 2 + 1 + 4 x 3 = 15 a slot.
        fn planned<'a>(
            edit: &'a dyn Fn(&mut serde_json::Value),
        ) -> impl Fn(&mut serde_json::Value) + 'a {
            move |v: &mut serde_json::Value| {
                text(&|_| {})(v);
                v["conditioning"]["layout"] = serde_json::json!({
                    "classes": ["star"], "colours": ["red"], "bins": 2, "max_objects": 1
                });
                v["conditioning"]["planner"] = serde_json::json!({
                    "tokenizer": "planner_tokenizer.json", "max_length": 12, "vocab_size": 50
                });
                v["graphs"]["planner"] = serde_json::json!({
                    "file": "planner.onnx",
                    "inputs": [{"name": "caption_ids", "dtype": "int64", "shape": ["batch", 12]}],
                    "outputs": [{"name": "scores", "dtype": "float32", "shape": ["batch", 1, 15]}]
                });
                edit(v);
            }
        }
        let mut v = minimal();
        planned(&|_| {})(&mut v);
        Manifest::parse(&v.to_string()).unwrap();
        refuse(
            &planned(&|v| {
                v["graphs"].as_object_mut().unwrap().remove("planner");
            }),
            "no `planner` graph",
        );
        refuse(
            &planned(&|v| {
                v["conditioning"].as_object_mut().unwrap().remove("layout");
            }),
            "conditioning.planner plans layouts",
        );
        refuse(
            &planned(&|v| v["conditioning"]["planner"]["tokenizer"] = "/etc/passwd".into()),
            "conditioning.planner.tokenizer \"/etc/passwd\" is not a plain file name",
        );
        refuse(
            &planned(&|v| v["conditioning"]["planner"]["max_length"] = (1u64 << 40).into()),
            "conditioning.planner.max_length",
        );
        refuse(
            &planned(&|v| v["graphs"]["planner"]["outputs"][0]["shape"][2] = 16.into()),
            "the layout's scores per slot = 15 but the `planner` graph's 'scores' has 16",
        );
    }
}
