"""The one checkpoint reader: a file is read once and its kind recognised once (models: :mod:`.factory`).

Kinds (:data:`KINDS`), told apart by the tensors' names, never by the file name:

* ``"project"``: a ``disse-train`` checkpoint, ``{"model": DELSA state, "config": resolved config, "optimizer",
  "step", ...}`` (docs/internals.md, "Checkpoints"); with ``config.model.preset: official`` the state is
  DISSEOfficial's (its ``*_release.pt`` export is the ``"official"`` kind);
* ``"official"``: the DISSE release's layout (``{"model_state_dict" | "state_dict" | "model": state, "epoch"}`` or a
  bare state dict; names ``audio_encoder.*``, ``text_encoder.*``, ``logit_scale``), e.g. ``disse_epoch20.pt``;
* ``"laion-clap"``: a LAION-CLAP checkpoint (``audio_branch.*`` / ``text_branch.*``; ``.pt`` or ``.safetensors``);
* ``"state-dict"``: any other dict of tensors (what the foreign-weight loaders may still map).

Everything is read with ``torch.load(weights_only=True)`` (memory-mapped where the file allows, so a 619 MiB
release is not copied twice). A file that is not a checkpoint is named for what it looks like (empty, text,
audio, a truncated zip, ...) in one :class:`~disse.schemas.SchemaError`; pickled objects are refused, and no
message ever suggests unpickling them.
"""
from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file as load_safetensors

from disse.schemas.errors import SchemaError

KINDS = ("project", "official", "laion-clap", "state-dict")
CONTAINER_KEYS = ("model_state_dict", "state_dict", "model")  # the release's order of preference
OFFICIAL_MARKERS = ("audio_encoder.", "text_encoder.")  # the release's outer names (DELSA's: audio., text.)
LAION_MARKERS = ("audio_branch.", "text_branch.")
_WRAPPER_PREFIXES = ("module.", "model.")  # DDP's and lightning-style wrappers, stripped from foreign weights

# leading bytes -> what a non-checkpoint file looks like (the message names it)
_AUDIO_MAGIC = ((b"RIFF", "a WAV audio file"), (b"fLaC", "a FLAC audio file"), (b"OggS", "an Ogg audio file"),
                (b"ID3", "an MP3 audio file"), (b"\xff\xfb", "an MP3 audio file"), (b"FORM", "an AIFF audio file"))
_ZIP_MAGIC = b"PK\x03\x04"


@dataclass
class Checkpoint:
    """A checkpoint file read once: its ``kind``, the model's tensors and every other top-level entry.

    ``state``: the model's ``{name: tensor}`` (project: ``DELSA.state_dict()``; official: release names with a
    DDP ``module.`` stripped; foreign kinds: wrapper prefixes stripped). ``entries``: the container's other
    entries (project: ``config``, ``optimizer``, ``step``, ``rng``, ``data``, ...; release: ``epoch``).
    """

    path: Path
    kind: str
    state: dict[str, torch.Tensor]
    entries: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> dict:
        """The resolved training config a project checkpoint carries (a plain dict; ``{}`` otherwise)."""
        cfg = self.entries.get("config")
        return cfg if isinstance(cfg, dict) else {}

    def training_state(self) -> dict:
        """A project checkpoint as ``disse-train`` wrote it (``{"model": state, **entries}``), for resuming."""
        return {"model": self.state, **self.entries}


def describe_file(path: Path, head: bytes) -> str | None:
    """What a file that cannot be a checkpoint looks like (``None`` when it may be one)."""
    if not head:
        return "an empty file (0 bytes)"
    for magic, what in _AUDIO_MAGIC:
        if head.startswith(magic):
            return what
    if head.startswith(_ZIP_MAGIC) or head[:1] == b"\x80" or _is_safetensors(head):
        return None
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and sum(c.isprintable() or c in "\r\n\t" for c in text) >= 0.95 * len(text):
        first = next((line.strip() for line in text.splitlines() if line.strip()), "")
        return f"a text file (first line: {first[:60]!r})"
    return f"unrecognised binary data (first bytes {head[:8].hex(' ')})"


def _is_safetensors(head: bytes) -> bool:
    # 8-byte little-endian header length, then a JSON header
    return len(head) > 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < 100_000_000


def _not_a_checkpoint(path: Path, what: str) -> SchemaError:
    return SchemaError(f"not a checkpoint: {what}. Give a disse-train checkpoint (runs/*/checkpoints/*.pt), the "
                       "released disse_epoch20.pt or a LAION-CLAP .pt", file=str(path))


def _load_container(path: Path) -> Any:
    """``torch.load(weights_only=True)`` (or safetensors) with one error naming what went wrong."""
    with open(path, "rb") as f:
        head = f.read(64)
    what = describe_file(path, head)
    if what is not None:
        raise _not_a_checkpoint(path, what)
    if _is_safetensors(head):
        try:
            return load_safetensors(str(path), device="cpu")
        except Exception as exc:  # noqa: BLE001  (safetensors raises its own error types for a bad header)
            raise SchemaError(f"cannot read safetensors checkpoint ({exc})", file=str(path)) from None
    if head.startswith(_ZIP_MAGIC) and not zipfile.is_zipfile(path):
        size = path.stat().st_size
        raise SchemaError(f"truncated or corrupt checkpoint: a zip archive without its directory ({size:,} bytes; "
                          "a copy or download cut short? compare its size with the original's)", file=str(path))
    try:
        # mmap: the tensors stay on disk until a model copies them (zip format only)
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=head.startswith(_ZIP_MAGIC))
    except pickle.UnpicklingError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if "Unsupported global" in line]
        detail = f" ({lines[0]})" if lines else ""
        raise SchemaError(f"refused: it holds pickled Python objects besides tensors{detail}, and DISSE never "
                          "unpickles arbitrary code (it loads with weights_only=True). Re-save the weights as a plain "
                          "state_dict (torch.save(model.state_dict(), path)) or as .safetensors",
                          file=str(path)) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SchemaError(f"cannot read checkpoint, truncated or corrupt? ({first})", file=str(path)) from None


def _tensors(obj: dict, strip: tuple[str, ...]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in obj.items():
        if torch.is_tensor(value):
            k = str(key)
            for prefix in strip:
                if k.startswith(prefix):
                    k = k[len(prefix):]
                    break
            out[k] = value
    return out


def _kind_of(state: dict[str, torch.Tensor]) -> str:
    if "logit_scale" in state or any(k.startswith(OFFICIAL_MARKERS) for k in state):
        return "official"
    if any(k.startswith(LAION_MARKERS) for k in state):
        return "laion-clap"
    return "state-dict"


def read_checkpoint(path: str | Path, *, expect: tuple[str, ...] | None = None, what: str = "checkpoint"
                    ) -> Checkpoint:
    """Read ``path`` once and recognise its kind. ``expect``: the kinds the caller can use (another kind is
    one error naming the file, what it is and what was wanted); ``what`` names the option in that error."""
    path = Path(path)
    if not path.is_file():
        raise SchemaError("file not found" if not path.exists() else "not a file (a folder?)", file=str(path),
                          field=None if what == "checkpoint" else what)
    obj = _load_container(path)
    if not isinstance(obj, dict):
        raise _not_a_checkpoint(path, f"it holds a {type(obj).__name__}, not a dict of tensors")
    if isinstance(obj.get("model"), dict) and isinstance(obj.get("config"), dict) \
            and (not any(str(k).startswith(OFFICIAL_MARKERS) for k in obj["model"])
                 or (obj["config"].get("model") or {}).get("preset") == "official"):  # disse-train, official preset
        ckpt = Checkpoint(path, "project", obj["model"], {k: v for k, v in obj.items() if k != "model"})
    else:
        container = next((k for k in CONTAINER_KEYS if isinstance(obj.get(k), dict)), None)
        inner = obj[container] if container else obj
        entries = {k: v for k, v in obj.items() if k != container and not isinstance(v, dict)} if container else {}
        state = _tensors(inner, ("module.",))
        kind = _kind_of(state)
        if kind != "official":  # foreign weights: lightning / open_clip wrappers too
            state = _tensors(inner, _WRAPPER_PREFIXES)
        if not state:
            raise _not_a_checkpoint(path, f"a dict without tensors (entries: {sorted(map(str, obj))[:8]})")
        ckpt = Checkpoint(path, kind, state, entries)
    if expect is not None and ckpt.kind not in expect:
        raise SchemaError(f"is a {_KIND_NAMES[ckpt.kind]}, but {what} needs a "
                          + " or a ".join(_KIND_NAMES[k] for k in expect), file=str(path), field=what)
    return ckpt


_KIND_NAMES = {"project": "disse-train checkpoint (this project's DELSA)",
               "official": "DISSE release checkpoint (the official model)",
               "laion-clap": "LAION-CLAP checkpoint", "state-dict": "state dict of unknown layout"}


def as_checkpoint(ckpt: str | Path | Checkpoint, **kwargs: Any) -> Checkpoint:
    """A path is read (:func:`read_checkpoint`); a :class:`Checkpoint` already read is passed through."""
    return ckpt if isinstance(ckpt, Checkpoint) else read_checkpoint(ckpt, **kwargs)
