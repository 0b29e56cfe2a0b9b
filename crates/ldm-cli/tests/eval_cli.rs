//! `ldm eval` and `ldm bench` on the shipped shapes bundle (run from the repository root, as a
//! user would): what they measure and write, and how they refuse bad input.

mod common;

use std::path::Path;

use common::{ldm, output, shapes_data};
use serde_json::Value;

fn repo_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

fn number(report: &Value, pointer: &str) -> f64 {
    report
        .pointer(pointer)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{pointer} missing in {report}"))
}

/// A diffusion run folder holding only the log.csv that `ldm eval --run` reads.
fn run_with_log(dir: &Path, log: &str) -> String {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("log.csv"), log).unwrap();
    dir.to_str().unwrap().to_string()
}

#[test]
fn eval_measures_reconstruction_generation_and_conditioning_and_compare_tabulates_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = shapes_data(dir.path(), 40, 64);
    let out = dir.path().join("eval");
    let run = run_with_log(
        &dir.path().join("run"),
        "step,loss,grad_norm,lr,steps_per_second\n50,0.9,1.0,0.001,2.0\n100,0.5,1.0,0.001,4.0\n150,0.4,1.0,0.001,3.0\n",
    );
    let (ok, text) = output(
        ldm()
            .current_dir(repo_root())
            .args(["eval", "--bundle", "export/shapes-text"])
            .args([
                "--data",
                data.to_str().unwrap(),
                "--samples",
                "8",
                "--steps",
                "2",
                "--run",
                &run,
            ])
            .args(["--out", out.to_str().unwrap()]),
    );
    assert!(ok, "{text}");
    let report: Value =
        serde_json::from_slice(&std::fs::read(out.join("eval.json")).unwrap()).unwrap();
    assert_eq!(report["rows"], 8);
    let psnr = number(&report, "/reconstruction/psnr");
    assert!((10.0..60.0).contains(&psnr), "{report}");
    for metric in ["ssim", "ms_ssim"] {
        let v = number(&report, &format!("/reconstruction/{metric}"));
        assert!(v > 0.0 && v <= 1.0, "{metric} {v}");
    }
    assert!(number(&report, "/generation/samples_per_second") > 0.0);
    assert_eq!(report["generation"]["steps"], 2);
    // The pixel judge reads the held-out scenes themselves almost always right.
    assert!(
        number(&report, "/generation/colour_and_shape/real") >= 0.75,
        "{report}"
    );
    // Each attribute of the caption on its own, then all four at once.
    let attributes: Vec<&str> = report["generation"]["caption_attributes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["column"].as_str().unwrap())
        .collect();
    assert_eq!(
        attributes,
        [
            "colour",
            "shape",
            "size",
            "position",
            "colour+shape+size+position"
        ]
    );
    assert!(
        number(&report, "/generation/caption_attributes/4/real") >= 0.75,
        "{report}"
    );
    // No evaluator: no feature-space figures; single shapes are no scenes to place.
    assert!(report["generation"]["features"].is_null());
    assert!(report["generation"]["placement"].is_null());
    for png in ["samples.png", "reconstructions.png"] {
        assert!(image::open(out.join(png)).is_ok(), "{png}");
    }
    // The run's last step and median logged rate.
    assert_eq!(report["training"]["steps"], 150);
    assert_eq!(number(&report, "/training/steps_per_second"), 3.0);

    let again = dir.path().join("again");
    std::fs::create_dir_all(&again).unwrap();
    std::fs::copy(out.join("eval.json"), again.join("eval.json")).unwrap();
    let compared = dir.path().join("compared");
    let (ok, text) = output(ldm().args([
        "compare",
        out.to_str().unwrap(),
        again.to_str().unwrap(),
        "--out",
        compared.to_str().unwrap(),
    ]));
    assert!(ok, "{text}");
    let table = std::fs::read_to_string(compared.join("compare.md")).unwrap();
    assert_eq!(table.lines().count(), 4, "{table}");
    assert!(
        table.contains("| again |") && table.contains("3.00 (1.00x)"),
        "{table}"
    );
    assert!(image::open(compared.join("compare.png")).is_ok());
}

#[test]
fn eval_scores_how_a_text_bundle_places_the_objects_of_held_out_scenes() {
    let dir = tempfile::tempdir().unwrap();
    let scenes = dir.path().join("scenes");
    let (ok, text) = output(
        ldm()
            .args(["data", "scenes", "--count", "80", "--out"])
            .arg(&scenes),
    );
    assert!(ok, "{text}");
    let out = dir.path().join("eval");
    let (ok, text) = output(
        ldm()
            .current_dir(repo_root())
            .args(["eval", "--bundle", "export/shapes-text", "--data"])
            .arg(scenes.join("validation"))
            .args(["--samples", "8", "--steps", "2", "--out"])
            .arg(&out),
    );
    assert!(ok, "{text}");
    assert!(text.contains("placement"), "{text}");
    let report: Value =
        serde_json::from_slice(&std::fs::read(out.join("eval.json")).unwrap()).unwrap();
    assert_eq!(report["generation"]["placement"]["judged_by"], "caption");
    // The judge reads real scenes mostly right, and another row's caption fits them far worse.
    let real = number(&report, "/generation/placement/real");
    assert!(real >= 0.7, "{report}");
    for share in ["generated", "other_rows"] {
        let v = number(&report, &format!("/generation/placement/{share}"));
        assert!((0.0..=1.0).contains(&v), "{share} {v}");
    }
    // The scenes have semantic maps: the judge reads them back from the round trips too.
    let map_miou = number(&report, "/reconstruction/map_miou");
    assert!((0.3..=1.0).contains(&map_miou), "{report}");
    assert!(text.contains("semantic map mIoU"), "{text}");
}

/// An emoji-like image folder: flat-coloured images with the caption and the three columns the
/// emoji evaluator judges.
fn emoji_like_data(dir: &Path) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let rows = [
        ("red heart", "Smileys & Emotion", "heart", [221, 46, 68]),
        ("red apple", "Food & Drink", "food-fruit", [200, 30, 40]),
    ];
    let mut metadata = String::new();
    for i in 0..8 {
        let (name, label, subcategory, colour) = rows[i % 2];
        let style = ["noto", "twemoji"][i / 2 % 2];
        let file = format!("{i}.png");
        image::RgbImage::from_pixel(64, 64, image::Rgb(colour))
            .save(dir.join(&file))
            .unwrap();
        metadata += &serde_json::json!({
            "file_name": file, "text": format!("{name}, {style} style"), "label": label,
            "subcategory": subcategory, "style": style,
        })
        .to_string();
        metadata += "\n";
    }
    std::fs::write(dir.join("metadata.jsonl"), metadata).unwrap();
    dir.to_str().unwrap().to_string()
}

#[test]
fn eval_judges_every_head_of_the_evaluator() {
    let dir = tempfile::tempdir().unwrap();
    let data = emoji_like_data(&dir.path().join("emoji"));
    let out = dir.path().join("eval");
    let (ok, text) = output(
        ldm()
            .current_dir(repo_root())
            .args(["eval", "--bundle", "export/emoji-text", "--data", &data])
            .args(["--evaluator", "models/emoji-evaluator", "--samples", "8"])
            .args(["--steps", "2", "--out", out.to_str().unwrap()]),
    );
    assert!(ok, "{text}");
    let report: Value =
        serde_json::from_slice(&std::fs::read(out.join("eval.json")).unwrap()).unwrap();
    let generation = &report["generation"];
    assert_eq!(generation["category"]["column"], "label", "{report}");
    let others: Vec<&str> = generation["other_heads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|head| head["column"].as_str().unwrap())
        .collect();
    assert_eq!(others, ["subcategory", "style"], "{report}");
    for head in generation["other_heads"].as_array().unwrap() {
        for share in ["generated", "real", "majority"] {
            let v = head[share].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&v), "{share} {v} in {head}");
        }
        assert!(text.contains(head["column"].as_str().unwrap()), "{text}");
    }
    // Half the rows are of each style.
    assert_eq!(generation["other_heads"][1]["majority"], 0.5, "{report}");
    // Decoded noise is the trivial baseline every generation is set against.
    let noise = generation["features"]["fid_decoded_noise"]
        .as_f64()
        .unwrap();
    assert!(noise.is_finite() && noise > 0.0, "{report}");
}

#[test]
fn eval_refuses_bad_input_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("eval");
    let out = out.to_str().unwrap();
    let (ok, text) = output(
        ldm()
            .current_dir(repo_root())
            .args(["eval", "--data", "/nowhere", "--out", out]),
    );
    assert!(!ok && text.contains("/nowhere"), "{text}");
    let data = shapes_data(dir.path(), 40, 64);
    let data = data.to_str().unwrap();
    let (ok, text) = output(ldm().current_dir(repo_root()).args([
        "eval",
        "--data",
        data,
        "--evaluator",
        "/no/evaluator",
        "--out",
        out,
    ]));
    assert!(
        !ok && text.contains("cannot open the evaluator /no/evaluator"),
        "{text}"
    );
    let (ok, text) = output(ldm().current_dir(repo_root()).args([
        "eval",
        "--data",
        data,
        "--samples",
        "2",
        "--out",
        out,
    ]));
    assert!(!ok && text.contains("--samples"), "{text}");
    let run = run_with_log(&dir.path().join("old-run"), "step,loss\n50,0.9\n");
    let (ok, text) = output(
        ldm()
            .current_dir(repo_root())
            .args(["eval", "--data", data, "--run", &run, "--out", out]),
    );
    assert!(!ok && text.contains("no steps_per_second column"), "{text}");
}

#[test]
fn compare_refuses_folders_without_a_report_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("compared");
    let (ok, text) = output(ldm().args([
        "compare",
        "/no/eval",
        "/no/other",
        "--out",
        out.to_str().unwrap(),
    ]));
    assert!(!ok && text.contains("/no/eval/eval.json"), "{text}");
    let bad = dir.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("eval.json"), "{}").unwrap();
    let (ok, text) = output(ldm().args([
        "compare",
        bad.to_str().unwrap(),
        bad.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]));
    assert!(
        !ok && text.contains("is not an `ldm eval` report"),
        "{text}"
    );
}

/// `ldm bench` of a shipped bundle and its release (one run of each, one thread, one
/// sampling step): its bench.json, and the folder it wrote into.
fn quick_bench(bundle: &str, release: &str) -> (Value, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bench");
    let (ok, text) = output(
        ldm()
            .current_dir(repo_root())
            .args(["bench", "--bundle", bundle, "--release", release])
            .args([
                "--runs",
                "1",
                "--warmup",
                "0",
                "--steps",
                "1",
                "--threads",
                "1",
            ])
            .args(["--out", out.to_str().unwrap()]),
    );
    assert!(ok, "{text}");
    let report = serde_json::from_slice(&std::fs::read(out.join("bench.json")).unwrap()).unwrap();
    (report, dir)
}

#[test]
fn bench_measures_every_graph_and_writes_json_and_a_plot() {
    let (report, dir) = quick_bench("export/shapes-text", "models/shapes-text");
    let out = dir.path().join("bench");
    let rows = report["rows"].as_array().unwrap();
    for target in [
        "encoder",
        "decoder",
        "unet",
        "text_encoder",
        "text-to-image",
    ] {
        let tract = rows
            .iter()
            .find(|r| r["target"] == target && r["engine"] == "tract")
            .unwrap_or_else(|| panic!("no tract row for {target}: {report}"));
        assert!(tract["median_ms"].as_f64().unwrap() > 0.0, "{tract}");
        assert!(tract["peak_rss_mb"].as_f64().unwrap() > 1.0, "{tract}");
    }
    let unet = rows
        .iter()
        .find(|r| r["target"] == "unet" && r["engine"] == "tract")
        .unwrap();
    assert!(unet["gmacs"].as_f64().unwrap() > 0.0);
    // The peak is the best of the matrix products measured, tract's own among them.
    let peak = number(&report, "/peaks/0/gmacs");
    let kernels = report["peaks"][0]["kernels"].as_array().unwrap();
    assert!(kernels.iter().any(|k| k["kernel"] == "tract"), "{report}");
    for kernel in kernels {
        let gmacs = kernel["gmacs"].as_f64().unwrap();
        assert!(gmacs > 0.0 && gmacs <= peak, "{kernel} against {peak}");
    }
    assert!(image::open(out.join("bench.png")).is_ok());

    let (ok, text) = output(ldm().current_dir(repo_root()).args([
        "bench",
        "--release",
        "/no/release",
        "--out",
        out.to_str().unwrap(),
    ]));
    assert!(!ok && text.contains("/no/release/model.toml"), "{text}");
}

#[test]
fn bench_runs_a_layout_bundle_end_to_end_from_a_layout() {
    let (report, _dir) = quick_bench("export/scenes-layout", "models/scenes-layout");
    let end_to_end = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["target"] == "text-to-image" && r["engine"] == "tract")
        .unwrap_or_else(|| panic!("no text-to-image row: {report}"));
    assert!(
        end_to_end["median_ms"].as_f64().unwrap() > 0.0,
        "{end_to_end}"
    );
}
