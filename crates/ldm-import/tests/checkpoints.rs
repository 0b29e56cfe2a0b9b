//! The checkpoint readers on files written by PyTorch itself (`torch.save`, in the shape
//! Lightning saves them) and on hostile pickles: tensors come back exactly, in every element
//! type and memory layout; a pickle that calls anything a state dict does not need is refused
//! by that name, and nothing runs.

use std::path::Path;
use std::process::Command;

use ldm_import::files::read_tensors;
use ldm_import::pickle::{self, PickleError};
use ldm_import::DType;

fn python() -> String {
    std::env::var("LDM_PYTHON").expect("LDM_PYTHON (set in .cargo/config.toml)")
}

fn run_python(script: &str, dir: &Path) {
    let out = Command::new(python())
        .args(["-c", script, dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A Lightning-shaped checkpoint: tensors of four element types, views among them, beside
/// optimiser state, numpy scalars, callback state and hyper-parameters.
const LIGHTNING: &str = r#"
import sys, collections, numpy as np, torch
from safetensors.torch import save_file
out = sys.argv[1]
g = torch.Generator().manual_seed(0)
base = torch.randn(3, 5, generator=g)
sd = collections.OrderedDict()
sd["model.diffusion_model.a"] = torch.randn(4, 6, generator=g)
sd["model.diffusion_model.half"] = torch.randn(7, generator=g).half()
sd["model.diffusion_model.bf16"] = torch.randn(2, 3, generator=g).bfloat16()
sd["model.diffusion_model.transposed"] = base.t()
sd["model.diffusion_model.slice"] = base[1:, 2:]
sd["model.diffusion_model.scalar"] = torch.tensor(3.5)
sd["model_ema.num_updates"] = torch.tensor(12, dtype=torch.int64)
torch.save({
    "epoch": 3, "global_step": np.int64(1200), "pytorch-lightning_version": "1.4.2",
    "state_dict": sd,
    "optimizer_states": [{"state": {0: {"step": torch.tensor(5.0), "exp_avg": torch.zeros(2)}}, "param_groups": [{"lr": 1e-4}]}],
    "lr_schedulers": [], "hparams_name": "kwargs",
    "hyper_parameters": {"base_lr": 1e-4, "betas": (0.9, 0.999), "names": {"a", "b"}},
    "callbacks": {"ModelCheckpoint": collections.OrderedDict(best=np.float32(1.5))},
}, out + "/lightning.ckpt")
save_file({k: v.contiguous() for k, v in sd.items()}, out + "/expected.safetensors")
"#;

#[test]
fn torch_checkpoints_come_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    run_python(LIGHTNING, dir.path());
    let read = read_tensors(&dir.path().join("lightning.ckpt")).unwrap();
    let expected = read_tensors(&dir.path().join("expected.safetensors")).unwrap();
    assert_eq!(read.len(), 7);
    assert_eq!(read, expected);
    assert_eq!(read["model.diffusion_model.half"].dtype, DType::F16);
    assert_eq!(read["model.diffusion_model.bf16"].dtype, DType::BF16);
    assert_eq!(read["model.diffusion_model.transposed"].shape, [5, 3]);
    assert_eq!(
        read["model.diffusion_model.scalar"].shape,
        Vec::<usize>::new()
    );
}

/// A checkpoint whose pickle would run a shell command when Python loads it.
const MALICIOUS: &str = r#"
import os, sys, torch
out = sys.argv[1]
class Payload:
    def __reduce__(self):
        return (os.system, ("touch " + out + "/pwned",))
torch.save({"state_dict": {"w": torch.zeros(2)}, "extra": Payload()}, out + "/malicious.ckpt")
class Eval:
    def __reduce__(self):
        return (eval, ("1 + 1",))
torch.save({"w": torch.zeros(2), "x": Eval()}, out + "/eval.pt")
"#;

#[test]
fn a_checkpoint_that_calls_anything_else_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    run_python(MALICIOUS, dir.path());
    let err = read_tensors(&dir.path().join("malicious.ckpt"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`posix.system`") || err.contains("`os.system`"),
        "{err}"
    );
    assert!(err.contains("nothing was run"), "{err}");
    assert!(!dir.path().join("pwned").exists());
    let err = read_tensors(&dir.path().join("eval.pt"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("`builtins.eval`"), "{err}");
}

#[test]
fn hand_written_hostile_pickles_are_refused() {
    // Protocol 0: GLOBAL os.system, REDUCE.
    let err = pickle::load(b"cos\nsystem\n(S'echo pwned'\ntR.").unwrap_err();
    assert_eq!(err, PickleError::Forbidden("os.system".into()));
    // Protocol 4: STACK_GLOBAL subprocess.Popen.
    let mut p = vec![0x80, 4];
    for s in ["subprocess", "Popen"] {
        p.push(0x8c);
        p.push(s.len() as u8);
        p.extend(s.as_bytes());
    }
    p.extend([0x93, b')', b'R', b'.']);
    assert_eq!(
        pickle::load(&p).unwrap_err(),
        PickleError::Forbidden("subprocess.Popen".into())
    );
    // An allowed container called with a forbidden callable's result is never reached: the
    // name is refused where it appears, before any REDUCE.
    let err = pickle::load(b"ccollections\nOrderedDict\n)Rcbuiltins\nexec\n.").unwrap_err();
    assert_eq!(err, PickleError::Forbidden("builtins.exec".into()));
    // A list appended to a copy of itself 64 times would hold 2^64 entries: the copies are
    // charged to a budget (found by the pickle fuzz target).
    let doubling = [&b"\x80\x02]"[..], &b"2a".repeat(64), b"."].concat();
    assert_eq!(
        pickle::load(&doubling).unwrap_err(),
        PickleError::TooLarge(1 << 22)
    );
    // A million nested one-element tuples (a megabyte, no MARK anywhere) would overflow the
    // stack when dropped: nesting is bounded as values are built. Shallower nesting loads.
    let nested = |levels: usize| [&b"\x80\x02N"[..], &vec![0x85; levels], b"."].concat();
    assert_eq!(
        pickle::load(&nested(1_000_000)).unwrap_err(),
        PickleError::TooLarge(1 << 22)
    );
    assert!(pickle::load(&nested(200)).is_ok());
    // Truncated, underflowing, unknown opcodes and old-style instantiation.
    for bad in [
        &b"\x80\x02}q\x00(X\x05\x00\x00\x00ab"[..],
        b"t.",
        b"\xff.",
        b"(i__main__\nX\n.",
    ] {
        assert!(pickle::load(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn a_file_that_is_neither_format_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("garbage.ckpt");
    std::fs::write(&path, b"definitely not a checkpoint").unwrap();
    let err = read_tensors(&path).unwrap_err().to_string();
    assert!(
        err.contains("garbage.ckpt") && err.contains("neither"),
        "{err}"
    );
    std::fs::write(&path, b"PK\x03\x04 truncated zip").unwrap();
    let err = read_tensors(&path).unwrap_err().to_string();
    assert!(err.contains("not a zip checkpoint"), "{err}");
}
