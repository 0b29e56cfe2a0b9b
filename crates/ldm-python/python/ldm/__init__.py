"""Latent diffusion bundles from Python.

Generation, its validation and its errors are the Rust runtime's (``ldm._ldm``); this module
only turns images into PIL images or numpy arrays and back::

    import ldm

    pipeline = ldm.Pipeline.load("export/emoji-text")
    pipeline.generate("red apple, twemoji style", seed=7)[0].save("apple.png")
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, List, Optional, Union

from . import _ldm
from ._ldm import Cancelled, LdmError, backends

__all__ = ["Bundle", "Cancelled", "LdmError", "Pipeline", "backends", "__version__"]
__version__: str = _ldm.__version__

PathLike = Union[str, "os.PathLike[str]"]
#: A progress callback: ``callback(step, total)``; returning ``False`` cancels.
Callback = Callable[[int, int], Optional[bool]]


def _raw(image: Any, what: str):
    """``(width, height, rgb bytes)`` of a PIL image or an ``HxWx3`` uint8 numpy array."""
    if image is None:
        return None
    if hasattr(image, "convert") and hasattr(image, "tobytes"):
        rgb = image.convert("RGB")
        return (rgb.width, rgb.height, rgb.tobytes())
    import numpy as np

    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise LdmError(
            f"the {what} must be a PIL image or an HxWx3 uint8 array, "
            f"not {array.dtype} of shape {array.shape}"
        )
    return (array.shape[1], array.shape[0], np.ascontiguousarray(array).tobytes())


def _class_map(image: Any):
    """``(width, height, id bytes)`` of a PIL image of mode ``L`` or an ``HxW`` uint8 array."""
    if image is None:
        return None
    if hasattr(image, "mode") and hasattr(image, "tobytes"):
        if image.mode != "L":
            raise LdmError(
                f"the semantic_map must be a grayscale (mode L) image of class ids, not mode {image.mode}"
            )
        return (image.width, image.height, image.tobytes())
    import numpy as np

    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 2:
        raise LdmError(
            f"the semantic_map must be a PIL image of mode L or an HxW uint8 array of class ids, "
            f"not {array.dtype} of shape {array.shape}"
        )
    return (array.shape[1], array.shape[0], np.ascontiguousarray(array).tobytes())


def _pil(width: int, height: int, rgb: bytes):
    from PIL import Image

    return Image.frombytes("RGB", (width, height), rgb)


def _numpy(width: int, height: int, rgb: bytes):
    import numpy as np

    return np.frombuffer(rgb, dtype=np.uint8).reshape(height, width, 3).copy()


class Bundle:
    """An exported bundle folder, checked as the runtime checks it before it runs anything."""

    def __init__(self, path: PathLike, manifest: Dict[str, Any]):
        self.path = os.fspath(path)
        #: ``manifest.json`` as a dict (graphs, conditioning, defaults, resolution...).
        self.manifest = manifest

    @classmethod
    def load(cls, path: PathLike) -> "Bundle":
        return cls(path, json.loads(_ldm.bundle_manifest(os.fspath(path))))

    @property
    def name(self) -> str:
        return self.manifest["name"]

    def __repr__(self) -> str:
        return f"Bundle({self.path!r}, name={self.name!r})"


class Pipeline:
    """A bundle loaded on an engine with its graphs open, ready to generate."""

    def __init__(self, native: "_ldm.Pipeline"):
        self._native = native
        self.bundle = Bundle(native.path, json.loads(native.manifest_json()))

    @classmethod
    def load(
        cls, bundle: PathLike, backend: str = "tract", threads: Optional[int] = None
    ) -> "Pipeline":
        """Loads ``bundle`` on ``backend`` (``tract``, ``ort-cpu``, ``ort-cuda``, ``ort-trt``)
        with ``threads`` threads (default: the machine's cores)."""
        return cls(_ldm.Pipeline.load(os.fspath(bundle), backend, threads))

    def generate(
        self,
        prompt: str,
        *,
        negative_prompt: str = "",
        steps: Optional[int] = None,
        guidance: Optional[float] = None,
        sampler: Optional[str] = None,
        eta: Optional[float] = None,
        seed: int = 0,
        width: Optional[int] = None,
        height: Optional[int] = None,
        n: int = 1,
        init_image: Any = None,
        mask: Any = None,
        strength: Optional[float] = None,
        semantic_map: Any = None,
        callback: Optional[Callback] = None,
        as_numpy: bool = False,
    ) -> List[Any]:
        """Generates ``n`` images of ``prompt`` (image i with seed + i), as PIL images, or as
        ``HxWx3`` uint8 numpy arrays with ``as_numpy``. Unset options take the bundle's
        defaults, as ``ldm generate`` does; the same seed gives the same image. ``init_image``
        (PIL or numpy) starts image-to-image, with ``mask`` (white: draw, black: keep)
        inpainting. ``semantic_map`` (a PIL image of mode ``L`` or an ``HxW`` uint8 array of
        class ids) is what a semantic-map bundle draws, at its size. The GIL is released while the engine runs; ``callback(step, total)``
        runs after every step and cancels with ``ldm.Cancelled`` when it returns False."""
        if not isinstance(n, int) or n < 1:
            raise LdmError(f"n must be a whole number of images, at least 1, not {n!r}")
        images = self._native.generate(
            prompt,
            n,
            negative_prompt,
            steps,
            guidance,
            sampler,
            eta,
            seed,
            width,
            height,
            _raw(init_image, "init_image"),
            _raw(mask, "mask"),
            strength,
            _class_map(semantic_map),
            callback,
        )
        convert = _numpy if as_numpy else _pil
        return [convert(w, h, rgb) for (w, h, rgb) in images]

    def __repr__(self) -> str:
        return f"Pipeline({self.bundle.path!r})"
