"""``load_lvlm``: checkpoint (local dir or hub id) -> LVLM, with one-line errors instead of hub tracebacks."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

from halluc.errors import ConfigError, ModelLoadError
from halluc.models._families import family_for_config
from halluc.models._lvlm import LVLM

__all__ = ["DTYPES", "check_device", "load_lvlm", "parse_dtype"]

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_dtype(dtype: str | torch.dtype) -> str | torch.dtype:
    """Map "auto" / a dtype name / a torch dtype to what ``from_pretrained`` accepts; reject anything else."""
    if dtype == "auto":
        return "auto"
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ConfigError(f"unsupported dtype {dtype!r}; choose one of: auto, {', '.join(DTYPES)}")


def check_device(device: str) -> str:
    """Accept "auto" (spread over available GPUs) or a torch device string that this machine can use."""
    if device == "auto":
        return device
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {device!r}; use e.g. cpu, cuda, cuda:1, mps or auto") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available here; use cpu")
    return device


def _first_line(error: BaseException) -> str:
    """The first non-empty line of an exception message, for one-line user errors."""
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)


def _source(name: str) -> str:
    """The local directory or hub id to load from; a missing local path or a non-model directory fails here."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"cannot load model {name!r}: the directory has no config.json (not a saved model)")
        return str(path)
    if path.is_absolute() or name.startswith((".", "~")):
        raise ModelLoadError(f"cannot load model {name!r}: no such directory")
    return name


def load_lvlm(
    name_or_path: str | Path,
    *,
    device: str = "cpu",
    dtype: str | torch.dtype = "auto",
    trust_remote_code: bool = False,
    attn_implementation: str = "sdpa",
) -> LVLM:
    """Load a supported LVLM and its processor; the family comes from the checkpoint's config, not its name."""
    torch_dtype = parse_dtype(dtype)
    device_map = check_device(device)
    name = str(name_or_path)
    source = _source(name)
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise ModelLoadError(
            f"cannot load model {name!r}: not a model directory nor a reachable Hugging Face Hub id "
            f"({_first_line(error)})"
        ) from None
    family_for_config(config)  # fail on an unsupported architecture before reading any weights
    try:
        model = AutoModelForImageTextToText.from_pretrained(
            source,
            config=config,
            dtype=torch_dtype,
            device_map=device_map,
            attn_implementation=attn_implementation,
            trust_remote_code=trust_remote_code,
        )
        processor = AutoProcessor.from_pretrained(source, trust_remote_code=trust_remote_code)
    except ImportError as error:
        raise ModelLoadError(
            f"cannot load model {name!r}: a required package is missing ({_first_line(error)})"
        ) from None
    except SafetensorError as error:  # a truncated or corrupt weights file
        raise ModelLoadError(
            f"cannot load model {name!r}: corrupt weights ({_first_line(error)}); download it again"
        ) from None
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"cannot load model {name!r}: {_first_line(error)}") from None
    return LVLM.from_parts(model, processor, name_or_path=name)
