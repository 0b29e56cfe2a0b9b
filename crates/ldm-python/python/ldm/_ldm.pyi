"""Type stubs of the native module (crates/ldm-python/src/lib.rs)."""

from typing import Callable, List, Optional, Tuple

__version__: str

RawImage = Tuple[int, int, bytes]

class LdmError(Exception):
    """An error of the ldm runtime: the message names the problem."""

class Cancelled(LdmError):
    """A generation stopped by its callback."""

def bundle_manifest(dir: str) -> str: ...
def backends() -> List[str]: ...

class Pipeline:
    @staticmethod
    def load(bundle: str, backend: str = "tract", threads: Optional[int] = None) -> "Pipeline": ...
    @property
    def path(self) -> str: ...
    def manifest_json(self) -> str: ...
    def generate(
        self,
        prompt: str,
        n: int,
        negative_prompt: str,
        steps: Optional[int],
        guidance: Optional[float],
        sampler: Optional[str],
        eta: Optional[float],
        seed: int,
        width: Optional[int],
        height: Optional[int],
        init_image: Optional[RawImage],
        mask: Optional[RawImage],
        strength: Optional[float],
        semantic_map: Optional[RawImage],
        callback: Optional[Callable[[int, int], Optional[bool]]],
    ) -> List[RawImage]: ...

class Server:
    def __init__(
        self,
        bundles: List[str],
        backend: str = "tract",
        threads: Optional[int] = None,
        max_batch: int = 8,
        queue: int = 32,
        api_key: Optional[str] = None,
        max_images: int = 8,
        max_side: int = 1024,
        max_steps: int = 250,
        deadline_s: int = 300,
    ) -> None: ...
    def models(self) -> List[str]: ...
    def handle(
        self, method: str, uri: str, headers: List[Tuple[str, str]], body: bytes
    ) -> Tuple[int, List[Tuple[str, str]], bytes]: ...
