"""Checkpoint directories on disk: written atomically, read safely. Shared by the training loop (its `last/` and
`best/` resume state, sevila.training.loop) and by our own model checkpoints (sevila.weights.ours).

A checkpoint is a directory published in one rename (`write_checkpoint_dir`): `trainable.safetensors` (tensors,
with a header naming the format, the step, the modules it holds and the configs, read by `read_header`), optionally
`state.pt` (the training state: optimizer, RNGs, position; tensors and primitives only, read back with
weights_only=True by `load_state_file`), `meta.json` (the same facts for humans) and, for a model checkpoint,
`tokenizer/`. Every load reports what it set in one `WeightsReport`.
"""
from __future__ import annotations

import contextlib
import enum
import json
import logging
import os
import pickle
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from sevila.atomic import atomic_write_json, shared_mode
from sevila.errors import UserError

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "sevila.train/1"
WEIGHTS_FILE = "trainable.safetensors"
STATE_FILE = "state.pt"
META_FILE = "meta.json"
TOKENIZER_DIR = "tokenizer"


class CheckpointError(UserError, RuntimeError):
    """A checkpoint is unreadable, unsafe, or does not fit the model/config it is loaded into."""



class CheckpointKind(str, enum.Enum):
    SEVILA = "sevila"  # ours: trainable.safetensors (+ meta.json, tokenizer/)
    HF_BLIP2 = "hf_blip2"  # a transformers Blip2ForConditionalGeneration directory
    LAVIS = "lavis"  # the official SeViLA .pth, or a LAVIS BLIP-2 .pth


@dataclass(frozen=True)
class WeightsReport:
    """What one load did. `set_parts` were fully overwritten; `untouched` kept their previous values."""

    source: str
    kind: CheckpointKind
    set_parts: tuple[str, ...]
    untouched: tuple[str, ...]
    partial: tuple[str, ...] = ()  # only with strict=False: parts with some tensors missing
    missing: tuple[str, ...] = ()  # model tensors of a mentioned part the source lacks (strict=False only)
    unexpected: tuple[str, ...] = ()  # source keys with no place in the model (strict=False only)
    dropped: tuple[str, ...] = ()  # source keys BLIP-2-T5 deliberately does not use
    n_tensors: int = 0
    n_values: int = 0
    step: int | None = None
    notes: tuple[str, ...] = ()

    def summary(self) -> str:
        lines = [f"loaded {self.kind.value} weights from {self.source}"
                 + (f" (step {self.step})" if self.step is not None else "")
                 + f": {self.n_tensors} tensors, {self.n_values:,} values",
                 f"  set:       {', '.join(self.set_parts) or '-'}",
                 f"  untouched: {', '.join(self.untouched) or '-'}"]
        if self.partial:
            lines.append(f"  PARTIAL:   {', '.join(self.partial)} (missing {brief_list(self.missing)})")
        if self.unexpected:
            lines.append(f"  unexpected keys ignored: {len(self.unexpected)} ({brief_list(self.unexpected)})")
        if self.dropped:
            lines.append(f"  unused by BLIP-2-T5, dropped: {len(self.dropped)} ({brief_list(self.dropped)})")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    __str__ = summary

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "kind": self.kind.value, "set": list(self.set_parts),
                "untouched": list(self.untouched), "partial": list(self.partial), "missing": list(self.missing),
                "unexpected": list(self.unexpected), "dropped": list(self.dropped), "n_tensors": self.n_tensors,
                "n_values": self.n_values, "step": self.step, "notes": list(self.notes)}


def brief_list(items: Sequence[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (", ..." if len(items) > n else "")


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters with requires_grad, by name (the frozen backbone is not part of a checkpoint)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def modules_of(names: Sequence[str]) -> list[str]:
    """The top-level submodules that own trainable parameters (what a checkpoint holds, in one line)."""
    return sorted({n.split(".", 1)[0] for n in names})


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened for fsync
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish_dir(tmp: Path, final: Path) -> None:
    """Put the complete directory `tmp` at `final`. POSIX cannot rename a directory over a non-empty one, so
    the old one is first renamed aside to `.NAME.old`, the new one renamed in, then the old one deleted. At
    every instant `final` is either absent or complete; if a crash lands between the two renames,
    `recover_dir` puts `.NAME.old` back."""
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    if old.exists():
        shutil.rmtree(old)


def recover_dir(final: Path) -> None:
    """Finish or undo an interrupted `_publish_dir`, and delete temp dirs left by a crash mid-write."""
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        if final.exists():
            shutil.rmtree(old)  # the new one made it; the old copy is stale
        else:
            os.replace(old, final)  # crashed between the renames: the old copy is the last complete one
            log.warning("recovered %s from an interrupted checkpoint swap", final)
    for stray in final.parent.glob(f".{final.name}.tmp-*"):
        shutil.rmtree(stray, ignore_errors=True)


#: meta keys that also go into the safetensors header (JSON-encoded), so the weights file alone says what it is
_HEADER_JSON_KEYS = ("modules", "config", "model_config")


def write_checkpoint_dir(final: Path, weights: Mapping[str, torch.Tensor], meta: Mapping[str, Any],
                         state: Mapping[str, Any] | None = None,
                         extra_files: Callable[[Path], None] | None = None) -> Path:
    """Write weights (+ full state) into a temp directory beside `final`, fsync, and publish it in one swap.
    A crash or error at any point leaves the previous `final` untouched and no partial directory visible
    under the final name. `extra_files(tmp_dir)` may add files (e.g. a tokenizer) before the swap."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        tensors = {n: t.detach().to("cpu", copy=True).contiguous() for n, t in weights.items()}
        st_meta = {"format": CHECKPOINT_FORMAT, "step": str(meta["step"])}
        st_meta |= {k: json.dumps(meta[k]) for k in _HEADER_JSON_KEYS if k in meta}
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata=st_meta)
        if state is not None:
            torch.save(dict(state), tmp / STATE_FILE)
        atomic_write_json(tmp / META_FILE, dict(meta))
        if extra_files is not None:
            extra_files(tmp)
        for f in sorted(p for p in tmp.rglob("*") if p.is_file()):
            _fsync_file(f)
            os.chmod(f, shared_mode())
        for d in [p for p in tmp.rglob("*") if p.is_dir()] + [tmp]:
            os.chmod(d, shared_mode(directory=True))  # mkdtemp makes it private; the umask says who may read
        _publish_dir(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def load_state_file(path: str | Path) -> dict[str, Any]:
    """The training state of a checkpoint, read with weights_only=True: tensors and primitives only, so a file
    carrying pickled code (any class instance) is refused instead of executed."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such state file")
    state = torch_load(path, "training state")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a {CHECKPOINT_FORMAT} training state")
    return state


def torch_load(path: Path, what: str, mmap: bool = False) -> Any:
    """torch.load with weights_only=True; a pickle that would run code is refused with a clear error. `mmap`: map
    the tensors from the file instead of reading them (a multi-GB .pth is then not held twice in memory); files in
    the pre-1.6 (non-zip) format cannot be mapped and are read."""
    if mmap:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "zip" not in str(e).lower():  # only the legacy format is retried without mmap
                raise CheckpointError(f"{path}: unreadable {what} ({e})") from e
        except pickle.UnpicklingError:
            pass  # reported below with the standard message
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: refused: it holds objects other than tensors and primitives, which "
                              f"could run code when loaded ({str(e).splitlines()[0]})") from e
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"{path}: unreadable {what} ({e})") from e



@dataclass(frozen=True)
class Header:
    """What our weights file says about itself."""

    path: Path
    step: int | None
    parts: tuple[str, ...]
    run_config: dict[str, Any]
    model_config: dict[str, Any] | None


def weights_path(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file (a SeViLA checkpoint directory holds {WEIGHTS_FILE})")
    return path


def read_header(path: str | Path) -> Header:
    """The header of our safetensors weights file (a checkpoint directory or the file itself), checked."""
    wfile = weights_path(path)
    try:
        with safe_open(str(wfile), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
    except Exception as e:
        raise CheckpointError(f"{wfile}: not a readable safetensors file ({e})") from e
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{wfile}: format {meta.get('format')!r}, expected {CHECKPOINT_FORMAT!r}")
    try:
        parts = tuple(json.loads(meta.get("modules", "[]")))
        run_config = json.loads(meta.get("config", "{}"))
        model_config = json.loads(meta["model_config"]) if "model_config" in meta else None
        step = int(meta["step"]) if "step" in meta else None
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{wfile}: malformed header ({e})") from e
    return Header(wfile, step, parts, run_config, model_config)


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of our weights file (a checkpoint directory or the file itself); safe on untrusted files."""
    wfile = weights_path(path)
    try:
        with safe_open(str(wfile), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for a corrupt file
        raise CheckpointError(f"{wfile}: not a readable safetensors file ({e})") from e


def load_weights(model: nn.Module, ckpt_dir: str | Path) -> WeightsReport:
    """Copy a training checkpoint's weights into `model`'s trainable parameters in place (exact resume). The
    checkpoint must hold exactly the model's trainable parameters with the same shapes; a mismatch is an error
    listing what differs (no partial, silent load). Returns, and logs, what was loaded."""
    header = read_header(ckpt_dir)
    tensors = load_tensors(header.path)
    params = trainable_state(model)
    missing = sorted(set(params) - set(tensors))
    unexpected = sorted(set(tensors) - set(params))
    if missing or unexpected:
        raise CheckpointError(f"{ckpt_dir}: does not match the model's trainable parameters; "
                              f"missing {missing[:10]}{'...' if len(missing) > 10 else ''}, "
                              f"unexpected {unexpected[:10]}{'...' if len(unexpected) > 10 else ''}")
    for name, p in params.items():
        if tuple(tensors[name].shape) != tuple(p.shape):
            raise CheckpointError(f"{ckpt_dir}: {name} has shape {tuple(tensors[name].shape)} in the "
                                  f"checkpoint, {tuple(p.shape)} in the model")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(tensors[name])
    loaded = modules_of(list(tensors))
    report = WeightsReport(source=str(ckpt_dir), kind=CheckpointKind.SEVILA, set_parts=tuple(loaded),
                           untouched=tuple(m for m in modules_of([n for n, _ in model.named_parameters()])
                                           if m not in loaded),
                           n_tensors=len(tensors), n_values=sum(t.numel() for t in tensors.values()),
                           step=header.step)
    log.info("%s", report.summary())
    return report

