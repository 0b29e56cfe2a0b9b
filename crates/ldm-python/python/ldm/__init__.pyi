from typing import Any, Callable, Dict, List, Optional, Union
import os

from ._ldm import Cancelled as Cancelled, LdmError as LdmError, backends as backends

__version__: str
PathLike = Union[str, "os.PathLike[str]"]
Callback = Callable[[int, int], Optional[bool]]

class Bundle:
    path: str
    manifest: Dict[str, Any]
    def __init__(self, path: PathLike, manifest: Dict[str, Any]) -> None: ...
    @classmethod
    def load(cls, path: PathLike) -> "Bundle": ...
    @property
    def name(self) -> str: ...

class Pipeline:
    bundle: Bundle
    @classmethod
    def load(
        cls, bundle: PathLike, backend: str = "tract", threads: Optional[int] = None
    ) -> "Pipeline": ...
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
    ) -> List[Any]: ...
