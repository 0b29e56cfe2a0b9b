"""Checks an exported bundle with the reference ONNX tools: every graph passes
onnx.checker.check_model (full check, with shape inference) and, run by Python onnxruntime
on the cases that ldm wrote, reproduces the expected outputs.

usage: check_bundle.py BUNDLE_DIR CASES_JSON
CASES_JSON: [{"graph": "unet.onnx", "inputs": {name: {"dtype", "shape", "data"}},
              "outputs": [{"shape", "data"}]}]
"""
import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort


def main(bundle, cases_path):
    manifest = json.load(open(os.path.join(bundle, "manifest.json")))
    for role, graph in manifest["graphs"].items():
        path = os.path.join(bundle, graph["file"])
        # A path, not a loaded model: the checker then also reads external data.
        onnx.checker.check_model(path, full_check=True)
        model = onnx.load(path, load_external_data=False)
        names = [i.name for i in model.graph.input]
        expected = [i["name"] for i in graph["inputs"]]
        assert names == expected, f"{role}: inputs {names}, manifest {expected}"
    sessions = {}
    worst = 0.0
    for case in json.load(open(cases_path)):
        file = case["graph"]
        if file not in sessions:
            sessions[file] = ort.InferenceSession(os.path.join(bundle, file), providers=["CPUExecutionProvider"])
        feeds = {
            name: np.asarray(t["data"], dtype=t["dtype"]).reshape(t["shape"])
            for name, t in case["inputs"].items()
        }
        outputs = sessions[file].run(None, feeds)
        for got, want in zip(outputs, case["outputs"]):
            want = np.asarray(want["data"], dtype=np.float32).reshape(want["shape"])
            assert got.shape == want.shape, f"{file}: shape {got.shape}, expected {want.shape}"
            diff = float(np.max(np.abs(got - want)))
            assert diff <= 1e-3, f"{file}: max abs difference {diff}"
            worst = max(worst, diff)
    print(f"ok: {len(manifest['graphs'])} graphs checked, max abs difference {worst:.2e}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
