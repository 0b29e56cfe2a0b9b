//! `ldm train` as a user runs it: killed with SIGKILL at random moments (mid-checkpoint
//! included) it always leaves a readable latest checkpoint to resume from; Ctrl-C saves and
//! exits cleanly.
#![cfg(feature = "train")]

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{ldm, output};

/// The tiny test model's configuration and a small shapes data set.
fn setup(dir: &Path) -> (String, String) {
    let data = common::shapes_data(dir, 40, 16);
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/tiny-text.toml");
    (config.to_string(), data.to_str().unwrap().to_string())
}

/// `ldm train autoencoder` on the tiny model, checkpointing every `every` steps.
fn train(config: &str, data: &str, out: &Path, steps: u64, every: u64, resume: bool) -> Command {
    let mut cmd = ldm();
    cmd.args([
        "train",
        "autoencoder",
        "--config",
        config,
        "--data",
        data,
        "--out",
        out.to_str().unwrap(),
    ])
    .args([
        "--steps",
        &steps.to_string(),
        "--batch-size",
        "4",
        // Two stages: a 16-pixel image is too small for the default three.
        "--disc-layers",
        "2",
        "--quiet",
    ])
    .args(["--checkpoint-every", &every.to_string(), "--log-every", "1"]);
    if resume {
        cmd.arg("--resume");
    }
    cmd
}

fn spawn(cmd: &mut Command) -> Child {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The step folder `checkpoints/latest` names, once it names one.
fn latest(run: &Path) -> Option<String> {
    std::fs::read_to_string(run.join("checkpoints/latest"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Waits (up to two minutes: the machine may be busy) until `latest` names another step.
fn wait_for_new_checkpoint(run: &Path, previous: &Option<String>) {
    for _ in 0..1200 {
        if latest(run).is_some() && latest(run) != *previous {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no new checkpoint in {} within two minutes", run.display());
}

#[test]
fn sigkill_at_any_moment_leaves_a_resumable_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (config, data) = setup(tmp.path());
    let run = tmp.path().join("run");
    // Every step writes a checkpoint; each kill lands a little after a new one appears, so
    // kills fall before, inside and after the next write.
    for (round, delay_ms) in [0u64, 35, 80, 150, 260].into_iter().enumerate() {
        let previous = latest(&run);
        let mut child = spawn(&mut train(&config, &data, &run, 1_000_000, 1, round > 0));
        wait_for_new_checkpoint(&run, &previous);
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let folder = run.join("checkpoints").join(latest(&run).unwrap());
        for file in [
            "autoencoder.safetensors",
            "optimizer.safetensors",
            "state.json",
        ] {
            assert!(
                folder.join(file).is_file(),
                "round {round}: {} lacks {file}",
                folder.display()
            );
        }
    }
    // Whatever the kills left, the run resumes and finishes.
    let step: u64 = latest(&run)
        .unwrap()
        .trim_start_matches("step-")
        .parse()
        .unwrap();
    let (ok, text) = output(&mut train(&config, &data, &run, step + 2, 1, true));
    assert!(ok, "{text}");
    assert!(
        text.contains(&format!("done at step {}", step + 2)),
        "{text}"
    );
}

#[test]
fn ctrl_c_saves_a_checkpoint_and_exits_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let (config, data) = setup(tmp.path());
    let run = tmp.path().join("run");
    let child = spawn(&mut train(&config, &data, &run, 1_000_000, 100_000, false));
    // Interrupt once training is under way (two steps logged).
    let log = run.join("log.csv");
    for _ in 0..600 {
        let rows = std::fs::read_to_string(&log).map_or(0, |t| t.lines().count());
        if rows > 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("stopped at step"), "{text}");
    assert!(
        std::fs::read_to_string(run.join("checkpoints/latest")).is_ok(),
        "{text}"
    );
}

#[test]
fn bad_training_options_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let (config, data) = setup(tmp.path());
    let run = tmp.path().join("run");
    let (ok, text) = output(train(&config, &data, &run, 2, 1, false).args(["--device", "tpu"]));
    assert!(!ok && text.contains("unknown device 'tpu'"), "{text}");
    let (ok, text) = output(train(&config, &data, &run, 2, 1, false).args(["--lr=-1"]));
    assert!(
        !ok && text.contains("--lr must be a positive number"),
        "{text}"
    );
    let (ok, text) = output(ldm().args([
        "train",
        "diffusion",
        "--config",
        &config,
        "--data",
        &data,
        "--out",
        run.to_str().unwrap(),
    ]));
    assert!(
        !ok && text.contains("pass --autoencoder runs/NAME"),
        "{text}"
    );
    let (ok, text) = output(ldm().args([
        "train",
        "autoencoder",
        "--data",
        &data,
        "--out",
        run.to_str().unwrap(),
    ]));
    assert!(!ok && text.contains("--config is required"), "{text}");
    // Numbers that size memory or work, and a discriminator deeper than the images allow.
    let cases: [(&[&str], &str); 5] = [
        (
            &["--batch-size", "100000"],
            "--batch-size must be 1 to 4096",
        ),
        (
            &["--steps", "99999999999"],
            "--steps must be at most 1000000000",
        ),
        (
            &["--kl-weight", "NaN"],
            "--kl-weight must be a non-negative number",
        ),
        (&["--disc-start", "0"], "need images of at least 24 pixels"),
        (&["--disc-layers", "99"], "99 is not in 1..=8"),
    ];
    for (args, expected) in cases {
        let out = run.to_str().unwrap();
        let (ok, text) = output(
            ldm()
                .args(["train", "autoencoder", "--config", &config, "--data", &data])
                .args(["--out", out, "--quiet"])
                .args(args),
        );
        assert!(!ok && text.contains(expected), "{args:?}: {text}");
        assert!(!text.contains("panicked"), "{text}");
    }
}

/// Runs as root only (a private mount namespace with a small tmpfs, by `unshare -m`), as CI
/// and the development machines do; elsewhere it says so and passes.
#[test]
fn a_full_disk_during_a_checkpoint_is_named_and_keeps_the_last_good_one() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: a tmpfs in a private mount namespace needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (config, data) = setup(tmp.path());
    let disk = tmp.path().join("disk");
    std::fs::create_dir(&disk).unwrap();
    let run = disk.join("run");
    let train = |steps: u32, resume: &str| {
        format!(
            "{} train autoencoder --config {config} --data {data} --out {} --steps {steps} --batch-size 4 --checkpoint-every 1 --log-every 1 --quiet {resume}",
            env!("CARGO_BIN_EXE_ldm"),
            run.display()
        )
    };
    // A tiny-model checkpoint is about 8.6 MB: 20 MB hold two, not the third the run needs.
    let script = format!(
        "mount -t tmpfs -o size=20m tmpfs {disk} || exit 97
         {first} 2>&1; echo \"status=$?\"
         echo \"latest=$(cat {run}/checkpoints/latest)\"
         ls -a {run}/checkpoints
         mount -o remount,size=256m {disk}
         {resumed} 2>&1; echo \"resumed=$?\"",
        disk = disk.display(),
        run = run.display(),
        first = train(40, ""),
        resumed = train(6, "--resume"),
    );
    let (ok, text) = output(Command::new("unshare").args([
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
    ]));
    assert!(ok, "{text}");
    assert!(!text.contains("panicked"), "{text}");
    assert!(
        text.contains("status=1"),
        "the full disk stops the run: {text}"
    );
    assert!(text.contains("No space left on device"), "{text}");
    // The pointer names a complete checkpoint written before the disk filled, no half-written
    // one is left, and the run resumes from it once there is room.
    let latest = text
        .lines()
        .find_map(|l| l.strip_prefix("latest=step-"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(latest.parse::<u32>().unwrap() >= 1, "{text}");
    assert!(
        !text.lines().any(|l| l.starts_with(".step-")),
        "a half-written checkpoint was left: {text}"
    );
    assert!(
        text.contains("resumed=0") && text.contains("done at step 6"),
        "{text}"
    );
}

/// `ldm model init`: an untrained release of a configuration exports and benchmarks like a
/// trained one (how the paper-size figures in BENCHMARKS.md are measured); a text model,
/// whose tokenizer would have to be learnt, is refused by name.
#[test]
fn an_untrained_release_exports_and_benchmarks() {
    let tmp = tempfile::tempdir().unwrap();
    let text_config = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/tiny-text.toml");
    let (ok, text) = output(
        ldm()
            .args(["model", "init", text_config, "--out"])
            .arg(tmp.path().join("t")),
    );
    assert!(!ok && text.contains("no tokenizer to ship"), "{text}");

    let unconditional = std::fs::read_to_string(text_config)
        .unwrap()
        .split("[conditioning]")
        .next()
        .unwrap()
        .to_string()
        + "[diffusion]\ntimesteps = 100\nbeta_start = 0.0015\nbeta_end = 0.0195\n";
    let config = tmp.path().join("tiny.toml");
    std::fs::write(&config, unconditional).unwrap();
    let release = tmp.path().join("release");
    let (ok, text) = output(
        ldm()
            .args(["model", "init"])
            .arg(&config)
            .arg("--out")
            .arg(&release),
    );
    assert!(ok && text.contains("untrained, seed 0"), "{text}");

    let bundle = tmp.path().join("bundle");
    let (ok, text) = output(
        ldm()
            .args(["export", "--fp16-weights", "--run"])
            .arg(&release)
            .arg("--out")
            .arg(&bundle),
    );
    assert!(ok, "{text}");
    let bench = |only: &str| {
        output(
            ldm()
                .args([
                    "bench",
                    "--runs",
                    "1",
                    "--warmup",
                    "0",
                    "--threads",
                    "1",
                    "--no-tch",
                ])
                .args(["--only", only, "--bundle"])
                .arg(&bundle)
                .arg("--release")
                .arg(&release)
                .arg("--out")
                .arg(tmp.path().join("bench")),
        )
    };
    let (ok, text) = bench("unet");
    assert!(ok, "{text}");
    assert!(
        text.contains("unet            tract       1 threads"),
        "{text}"
    );
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("decoder") || l.contains("tch-eager   ")),
        "{text}"
    );
    let (ok, text) = bench("text-to-image");
    assert!(
        !ok && text.contains("--only text-to-image: the bundle's measurements are"),
        "{text}"
    );
}
