"""Every way weights get into (and out of) a SeViLA model, in one module.

Four sources, each with a loader that says what it set (DESIGN.md §2, trap "checkpoints holding only one module, so
users must merge by hand": here a checkpoint names what it holds, and loading reports what it loaded):

1. Our own checkpoints (`save_sevila` / `load_sevila`, and the training loop's `last/` and `best/`): a directory with
   `trainable.safetensors` whose header names the format, the step, the parts it holds (`vision`, `t5`,
   `localizer`, `answerer`), the run config and, for `save_sevila`, the SeViLAConfig; plus `meta.json` and, when a
   tokenizer is attached, `tokenizer/`. Written atomically (a temp directory published in one rename).
2. A BLIP-2 Flan-T5 directory in transformers format (`Blip2ForConditionalGeneration.save_pretrained`, e.g. a local
   copy of Salesforce/blip2-flan-t5-xl): `vision_model.*` -> the shared ViT, its `post_layernorm` -> BOTH modules'
   `ln_vision`, `qformer.*` / `query_tokens` / `language_projection.*` -> BOTH modules' bridges (the official code
   starts both Q-Formers from BLIP-2's: `load_qformer_loc`), `language_model.*` -> Flan-T5. Read offline only.
3. The official SeViLA checkpoint (`sevila_pretrained.pth`, LAVIS `torch.save({"model": state_dict, ...})`) and
   LAVIS BLIP-2 checkpoints: LAVIS/BERT names are mapped onto HF's Blip2QFormerModel names here (no LAVIS import),
   following transformers' own BLIP-2 conversion (`convert_blip_2_original_to_pytorch.py`: `Qformer.bert` ->
   `qformer`, `attention.self` -> `attention.attention`, `embeddings.LayerNorm` -> `layernorm`, EVA's
   `q_bias`/`v_bias` -> one `qkv.bias` = [q, 0, v]). Unsafe pickles are refused (`torch.load(weights_only=True)`).

Shared rules of every loader (`_apply`): a part is set only when the source holds ALL of its tensors with the right
shapes (no silent half-loaded Q-Former); parts the source does not mention are left untouched and listed as such;
source keys that BLIP-2-T5 deliberately does not use (BERT word/position embeddings, `cls.*`, the Q-Former's text FFN,
`position_ids`) are dropped and listed; any other key is "unexpected" and, with `strict=True`, an error.
"""
from __future__ import annotations

import contextlib
import enum
import json
import logging
import os
import pickle
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .io import atomic_write_json

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "sevila.train/1"
WEIGHTS_FILE = "trainable.safetensors"
STATE_FILE = "state.pt"
META_FILE = "meta.json"
TOKENIZER_DIR = "tokenizer"

#: The parts of a SeViLA model a checkpoint can hold; a parameter's part is the first component of its name.
PARTS: tuple[str, ...] = ("vision", "t5", "localizer", "answerer")
BRIDGES: tuple[str, ...] = ("localizer", "answerer")


class CheckpointError(RuntimeError):
    """A checkpoint is unreadable, unsafe, or does not fit the model/config it is loaded into."""


# =============================================================================================================
# 1. Checkpoint directory I/O (shared with the training loop, sevila/train.py)
# =============================================================================================================


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters with requires_grad, by name (the frozen backbone is not part of a checkpoint)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _modules_of(names: Sequence[str]) -> list[str]:
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
            os.chmod(f, 0o644)
        for d in [p for p in tmp.rglob("*") if p.is_dir()] + [tmp]:
            os.chmod(d, 0o755)  # mkdtemp makes it private; a checkpoint is meant to be shared
        _publish_dir(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def load_weights_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a checkpoint's safetensors file (safe to read from an untrusted source)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weights file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for a corrupt header
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
    return tensors, meta


def load_state_file(path: str | Path) -> dict[str, Any]:
    """The training state of a checkpoint, read with weights_only=True: tensors and primitives only, so a file
    carrying pickled code (any class instance) is refused instead of executed."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such state file")
    state = _torch_load(path, "training state")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a {CHECKPOINT_FORMAT} training state")
    return state


def _torch_load(path: Path, what: str, mmap: bool = False) -> Any:
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
class LoadReport:
    """What `load_weights` (exact resume of the training loop) loaded."""

    path: Path
    step: int
    modules: list[str]
    n_tensors: int
    n_elements: int

    def __str__(self) -> str:
        return (f"loaded {self.n_tensors} tensors ({self.n_elements:,} values) of modules "
                f"{', '.join(self.modules)} from {self.path} (step {self.step})")


def load_weights(model: nn.Module, ckpt_dir: str | Path) -> LoadReport:
    """Copy a checkpoint's trainable weights into `model` in place. The checkpoint must hold exactly the
    model's trainable parameters with the same shapes; a mismatch is an error listing what differs (no
    partial, silent load). Returns, and logs, what was loaded."""
    ckpt_dir = Path(ckpt_dir)
    tensors, meta = load_weights_file(ckpt_dir / WEIGHTS_FILE)
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{ckpt_dir / WEIGHTS_FILE}: format {meta.get('format')!r}, "
                              f"expected {CHECKPOINT_FORMAT!r}")
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
    report = LoadReport(ckpt_dir, int(meta.get("step", -1)), json.loads(meta.get("modules", "[]")),
                        len(tensors), sum(t.numel() for t in tensors.values()))
    log.info("%s", report)
    return report


# =============================================================================================================
# 2. Parts, tensor sources and the one place that copies weights into a model
# =============================================================================================================


class CheckpointKind(str, enum.Enum):
    SEVILA = "sevila"  # ours: trainable.safetensors (+ meta.json, tokenizer/)
    HF_BLIP2 = "hf_blip2"  # a transformers Blip2ForConditionalGeneration directory
    LAVIS = "lavis"  # the official SeViLA .pth, or a LAVIS BLIP-2 .pth


class LavisLayout(str, enum.Enum):
    """What the un-suffixed LAVIS keys (`Qformer.*`, `query_tokens`, `t5_proj.*`, `ln_vision.*`) mean.

    SEVILA: the official SeViLA model, where they are the Answerer and the `_loc`-suffixed keys the Localizer.
    BLIP2: a plain LAVIS BLIP-2 checkpoint, whose single Q-Former initialises BOTH modules (as the official code's
    `load_qformer_loc` does); `_loc` keys are then refused.
    """

    SEVILA = "sevila"
    BLIP2 = "blip2"


class Numerics(str, enum.Enum):
    """Which numbers a model built from an HF BLIP-2 directory computes where LAVIS and transformers differ.

    LAVIS: SeViLA's own (official code): Flan-T5's gated FFN with exact GELU (`t5_config.dense_act_fn = "gelu"`)
    and `ln_vision` as a default nn.LayerNorm (eps 1e-5). Use this for SeViLA checkpoints.
    HF: what transformers' Blip2ForConditionalGeneration computes from the same directory (`gelu_new`, the vision
    config's `layer_norm_eps`), e.g. to reproduce its outputs exactly.
    """

    LAVIS = "lavis"
    HF = "hf"


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
            lines.append(f"  PARTIAL:   {', '.join(self.partial)} (missing {_head(self.missing)})")
        if self.unexpected:
            lines.append(f"  unexpected keys ignored: {len(self.unexpected)} ({_head(self.unexpected)})")
        if self.dropped:
            lines.append(f"  unused by BLIP-2-T5, dropped: {len(self.dropped)} ({_head(self.dropped)})")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    __str__ = summary

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "kind": self.kind.value, "set": list(self.set_parts),
                "untouched": list(self.untouched), "partial": list(self.partial), "missing": list(self.missing),
                "unexpected": list(self.unexpected), "dropped": list(self.dropped), "n_tensors": self.n_tensors,
                "n_values": self.n_values, "step": self.step, "notes": list(self.notes)}


def _head(items: Sequence[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (", ..." if len(items) > n else "")


def _part(name: str) -> str:
    return name.split(".", 1)[0]


def canonical_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor of the model once, by its first name: parameters without tied duplicates (T5's
    `encoder.embed_tokens` IS `shared`) plus persistent buffers. This is what a full checkpoint holds."""
    out: dict[str, torch.Tensor] = dict(model.named_parameters())
    persistent = model.state_dict(keep_vars=True)
    seen = {id(t) for t in out.values()}
    for name, buf in model.named_buffers():
        if id(buf) not in seen and name in persistent:
            out[name] = buf
    return out


def _aliases(model: nn.Module, canonical: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """Tied names -> the canonical name of the same tensor (e.g. t5.encoder.embed_tokens.weight -> t5.shared.weight)."""
    by_id = {id(t): n for n, t in canonical.items()}
    return {n: by_id[id(t)] for n, t in model.state_dict(keep_vars=True).items()
            if n not in canonical and id(t) in by_id}


Producer = Callable[[], torch.Tensor]


@dataclass(frozen=True)
class Entry:
    """One source of a model tensor: the checkpoint key, how to read it, and its shape without reading it."""

    key: str
    get: Producer
    shape: Callable[[], tuple[int, ...]]


@dataclass
class KeyPlan:
    """A source mapped onto model names: target name -> where its value comes from, plus what was left out."""

    targets: dict[str, list[Entry]] = field(default_factory=dict)  # several entries = tied copies in the source
    dropped: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, target: str, entry: Entry) -> None:
        self.targets.setdefault(target, []).append(entry)


def _apply(model: nn.Module, plan: KeyPlan, source: str, kind: CheckpointKind, *, strict: bool,
           step: int | None = None) -> WeightsReport:
    """Check `plan` against the model part by part, then copy. Nothing is copied when a check fails."""
    canonical = canonical_state(model)
    aliases = _aliases(model, canonical)
    notes = list(plan.notes)
    unexpected = list(plan.unexpected)
    # 1. fold tied aliases onto their canonical tensor
    targets: dict[str, list[Entry]] = {}
    for name, entries in plan.targets.items():
        canon = aliases.get(name, name)
        if canon not in canonical:
            unexpected += [f"{e.key} -> {name}" for e in entries]
            continue
        targets.setdefault(canon, []).extend(entries)
    # 2. T5 v1.1 / Flan-T5 has its own lm_head; a checkpoint saved with it tied to `shared` does not store it
    lm_head, shared = "t5.lm_head.weight", "t5.shared.weight"
    if lm_head in canonical and lm_head not in targets and shared in targets:
        targets[lm_head] = targets[shared]
        notes.append("t5.lm_head.weight not in the checkpoint (tied to shared there): copied from shared")
    # 3. per part: complete, or untouched, or (strict=False) partial
    by_part: dict[str, set[str]] = {}
    for name in canonical:
        by_part.setdefault(_part(name), set()).add(name)
    set_parts, untouched, partial, missing = [], [], [], []
    for part, names in by_part.items():
        given = names & set(targets)
        if not given:
            untouched.append(part)
        elif given == names:
            set_parts.append(part)
        else:
            partial.append(part)
            missing += sorted(names - given)
    if strict and (partial or unexpected):
        problems = []
        if partial:
            problems.append(f"incomplete parts {partial}: missing {len(missing)} tensors ({_head(missing, 8)})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected keys ({_head(sorted(unexpected), 8)})")
        raise CheckpointError(f"{source}: does not fit the model: " + "; ".join(problems)
                              + " (strict=False loads the rest and reports these)")
    # 4. shapes (read from headers, no tensor loaded) and tied copies, all checked before anything is copied
    for name, entries in targets.items():
        want = tuple(canonical[name].shape)
        for e in entries:
            if tuple(e.shape()) != want:
                raise CheckpointError(f"{source}: {e.key} has shape {tuple(e.shape())}, the model's {name} has {want}")
        if len(entries) > 1:  # tied copies in the source (LAVIS keeps shared and both embed_tokens)
            first = entries[0].get()
            for e in entries[1:]:
                if not torch.equal(e.get().to(first.dtype), first):
                    raise CheckpointError(f"{source}: {entries[0].key} and {e.key} both give {name} but differ")
    # 5. copy, one tensor in memory at a time (a 4B-parameter checkpoint is never held whole beside the model)
    n_tensors = n_values = 0
    with torch.no_grad():
        for name, entries in targets.items():
            value = entries[0].get()
            canonical[name].copy_(value.to(dtype=canonical[name].dtype))
            n_tensors += 1
            n_values += value.numel()
            del value
    order = {p: i for i, p in enumerate(PARTS)}
    srt = lambda xs: tuple(sorted(xs, key=lambda p: (order.get(p, 99), p)))  # noqa: E731
    report = WeightsReport(source=source, kind=kind, set_parts=srt(set_parts), untouched=srt(untouched),
                           partial=srt(partial), missing=tuple(missing), unexpected=tuple(sorted(unexpected)),
                           dropped=tuple(sorted(plan.dropped)), n_tensors=n_tensors, n_values=n_values, step=step,
                           notes=tuple(notes))
    log.info("%s", report.summary())
    return report


class _Source:
    """Read-only view of a checkpoint's tensors (safetensors shards read lazily, or an in-memory state dict)."""

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}
        self._stack = contextlib.ExitStack()

    @classmethod
    def from_files(cls, files: Sequence[Path]) -> "_Source":
        src = cls()
        for path in files:
            if path.suffix == ".safetensors":
                try:
                    f = src._stack.enter_context(safe_open(str(path), framework="pt", device="cpu"))
                except Exception as e:
                    src.close()
                    raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
                for k in f.keys():
                    src._entries[k] = Entry(k, lambda f=f, k=k: f.get_tensor(k),
                                            lambda f=f, k=k: tuple(f.get_slice(k).get_shape()))
            else:
                src._add_state(_state_dict_of(_torch_load(path, "checkpoint", mmap=True), path), path)
        return src

    @classmethod
    def from_state(cls, state: Mapping[str, Any], where: Path | str) -> "_Source":
        src = cls()
        src._add_state(state, where)
        return src

    def _add_state(self, state: Mapping[str, Any], where: Path | str) -> None:
        for k, v in state.items():
            if not torch.is_tensor(v):
                raise CheckpointError(f"{where}: entry {k!r} of the state dict is a {type(v).__name__}, not a tensor")
            self._entries[str(k)] = Entry(str(k), lambda v=v: v, lambda v=v: tuple(v.shape))

    def keys(self) -> list[str]:
        return list(self._entries)

    def entry(self, key: str) -> Entry:
        return self._entries[key]

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> "_Source":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _state_dict_of(obj: Any, path: Path) -> Mapping[str, Any]:
    """LAVIS saves `{"model": state_dict, "optimizer": ..., "config": ..., "epoch": ...}`; accept a bare state dict."""
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        return obj["model"]
    if isinstance(obj, Mapping) and obj and all(torch.is_tensor(v) for v in obj.values()):
        return obj
    keys = sorted(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__
    raise CheckpointError(f"{path}: neither a state dict nor a LAVIS checkpoint with a 'model' state dict "
                          f"(top level: {keys})")


# =============================================================================================================
# 3. Our own checkpoints
# =============================================================================================================


@dataclass(frozen=True)
class Header:
    """What our weights file says about itself."""

    path: Path
    step: int | None
    parts: tuple[str, ...]
    run_config: dict[str, Any]
    model_config: dict[str, Any] | None


def _weights_path(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file (a SeViLA checkpoint directory holds {WEIGHTS_FILE})")
    return path


def read_header(path: str | Path) -> Header:
    """The header of our safetensors weights file (a checkpoint directory or the file itself), checked."""
    wfile = _weights_path(path)
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
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise CheckpointError(f"{wfile}: names parts {unknown} that a SeViLA model does not have ({PARTS})")
    return Header(wfile, step, parts, run_config, model_config)


def save_sevila(model: nn.Module, out_dir: str | Path, modules: Sequence[str] = BRIDGES, step: int = 0, *,
                run_config: Mapping[str, Any] | None = None, with_tokenizer: bool = True) -> Path:
    """Save the named parts of `model` (any of "vision", "t5", "localizer", "answerer") to the directory `out_dir`.

    Format = the training loop's (`trainable.safetensors` + `meta.json`), with the SeViLAConfig in the header so
    `load_sevila` can rebuild the model, and the tokenizer in `tokenizer/` when one is attached. Save all four
    parts for a self-contained model (the tiny world); the bridges alone on top of a BLIP-2 backbone.
    """
    parts = tuple(dict.fromkeys(modules))
    bad = [p for p in parts if p not in PARTS]
    if not parts or bad:
        raise ValueError(f"modules must be a non-empty subset of {PARTS}, got {list(modules)}")
    weights = {n: t for n, t in canonical_state(model).items() if _part(n) in parts}
    meta = {"step": int(step), "modules": list(parts), "config": dict(run_config or {}),
            "model_config": model.config.to_dict(),
            "n_tensors": len(weights), "n_values": sum(t.numel() for t in weights.values())}
    tokenizer = getattr(model, "tokenizer", None)
    extra = None
    if with_tokenizer and tokenizer is not None:
        extra = lambda tmp: tokenizer.save_pretrained(str(tmp / TOKENIZER_DIR))  # noqa: E731
    out = write_checkpoint_dir(Path(out_dir), weights, meta, extra_files=extra)
    log.info("saved %s (step %d) to %s", ", ".join(parts), step, out)
    return out


def load_sevila(path: str | Path, model: nn.Module | None = None, *, backbone: str | Path | None = None,
                strict: bool = True) -> tuple[nn.Module, WeightsReport]:
    """Load our checkpoint (a directory, or its safetensors file) into `model`, or build the model it describes.

    Without `model`: the SeViLAConfig comes from the header and the tokenizer from `tokenizer/` beside the weights.
    A checkpoint holding only the bridges needs the frozen backbone from `backbone` (an HF BLIP-2 directory, loaded
    first and logged); holding all four parts it is self-contained. Returns (model, report of THIS checkpoint).
    """
    header = read_header(path)
    if model is None:
        if header.model_config is None:
            raise CheckpointError(f"{header.path}: holds no model config (a training checkpoint): pass the model "
                                  "it was trained on as `model=`, or load it through load_for_inference with a "
                                  "backbone")
        from .model import SeViLAConfig  # noqa: PLC0415 - model imports transformers; keep this module light

        config = SeViLAConfig.from_dict(header.model_config)
        tokenizer = _checkpoint_tokenizer(header)
        if backbone is not None:
            model, _ = _with_backbone(config, tokenizer, backbone)
        elif {"vision", "t5"} <= set(header.parts):
            model = _empty_model(config, tokenizer)  # every tensor of a complete checkpoint is overwritten
        else:
            raise CheckpointError(
                f"{header.path}: holds only {', '.join(header.parts)}; the frozen ViT and Flan-T5 must come from "
                "somewhere: pass backbone=<BLIP-2 directory> (CLI: --backbone)")
    with _Source.from_files([header.path]) as src:
        plan = KeyPlan()
        for k in src.keys():
            plan.add(k, src.entry(k))
        report = _apply(model, plan, str(header.path), CheckpointKind.SEVILA, strict=strict, step=header.step)
    return model, report


def _checkpoint_tokenizer(header: Header):
    tok_dir = header.path.parent / TOKENIZER_DIR
    return _load_tok(tok_dir) if tok_dir.is_dir() else None


def _with_backbone(config, tokenizer, backbone: str | Path) -> tuple[nn.Module, WeightsReport]:
    """A model of `config` whose every part is first loaded from the BLIP-2 directory `backbone`."""
    model = _empty_model(config, tokenizer)
    report = load_blip2_weights(model, backbone)
    if model.tokenizer is None:
        _attach_dir_tokenizer(model, Path(backbone))
    return model, report


def _load_tok(path: Path):
    from .tokenizer import load_tokenizer  # noqa: PLC0415

    return load_tokenizer(path)


def _empty_model(config, tokenizer=None):
    """A SeViLA with uninitialised storage (built on the meta device, then given real memory): for loads that
    overwrite every tensor, so the 4B-parameter random init is skipped. The model has no buffers to recompute."""
    from .model import build_sevila  # noqa: PLC0415

    model = build_sevila(config, device="meta")
    ties = _aliases(model, canonical_state(model))  # e.g. t5.encoder.embed_tokens.weight -> t5.shared.weight
    model = model.to_empty(device="cpu")  # meta -> cpu makes new Parameters, one per module: ties are lost ...
    for alias, canon in ties.items():  # ... and restored here
        owner, attr = alias.rsplit(".", 1)
        setattr(model.get_submodule(owner), attr, model.get_parameter(canon))
    if tokenizer is not None:
        model.attach_tokenizer(tokenizer)
    return model


# =============================================================================================================
# 4. transformers BLIP-2 directories
# =============================================================================================================

_ST_INDEX = "model.safetensors.index.json"
_BIN_INDEX = "pytorch_model.bin.index.json"


def read_blip2_config(hf_dir: str | Path):
    """The Blip2Config of a local directory (config.json), checked to be BLIP-2 with a T5 language model."""
    from transformers import Blip2Config  # noqa: PLC0415

    hf_dir = Path(hf_dir)
    cfg_path = hf_dir / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{hf_dir}: no config.json (not a transformers model directory)")
    try:
        raw = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_path}: not valid JSON ({e})") from e
    if raw.get("model_type") not in ("blip-2", "blip_2"):
        raise CheckpointError(f"{cfg_path}: model_type {raw.get('model_type')!r}, expected 'blip-2'")
    if (raw.get("text_config") or {}).get("model_type", "t5") != "t5":
        raise CheckpointError(f"{cfg_path}: the language model is {raw['text_config'].get('model_type')!r}; SeViLA "
                              "is built on Flan-T5 (model_type 't5')")
    return Blip2Config.from_dict(raw)


_VISION_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "patch_size",
                "hidden_act", "layer_norm_eps", "qkv_bias", "attention_dropout", "initializer_range")
_QFORMER_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
                 "hidden_dropout_prob", "attention_probs_dropout_prob", "layer_norm_eps", "cross_attention_frequency",
                 "initializer_range", "max_position_embeddings")
_T5_KEYS = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads",
            "relative_attention_num_buckets", "relative_attention_max_distance", "dropout_rate",
            "layer_norm_epsilon", "feed_forward_proj", "initializer_factor", "pad_token_id", "eos_token_id",
            "decoder_start_token_id")


def config_from_blip2(hf_config, numerics: Numerics = Numerics.LAVIS, max_text_len: int = 77):
    """SeViLAConfig from a Blip2Config: the sizes of the checkpoint, the numerics chosen by `numerics`.

    T5 output scaling: T5 v1.1 / Flan-T5 does not scale the decoder output before lm_head; transformers records that
    as `tie_word_embeddings=False` (v4) or `scale_decoder_outputs=False` (v5), which we carry over either way.
    """
    from .model import SeViLAConfig  # noqa: PLC0415

    numerics = Numerics(numerics)
    v, q, t = hf_config.vision_config, hf_config.qformer_config, hf_config.text_config
    vision = {k: getattr(v, k) for k in _VISION_KEYS if getattr(v, k, None) is not None}
    qformer = {k: getattr(q, k) for k in _QFORMER_KEYS if getattr(q, k, None) is not None}
    t5 = {k: getattr(t, k) for k in _T5_KEYS if getattr(t, k, None) is not None}
    scale = getattr(t, "scale_decoder_outputs", None)
    if scale is None:
        scale = bool(getattr(t, "tie_word_embeddings", True))
    t5["tie_word_embeddings"] = bool(scale)  # True -> scaled output (original T5); False -> T5 v1.1 / Flan-T5
    if t5.get("decoder_start_token_id") is None:
        t5["decoder_start_token_id"] = t5.get("pad_token_id", 0)
    if numerics is Numerics.LAVIS:
        act, eps = "gelu", 1e-5  # official sevila.py: t5_config.dense_act_fn = "gelu"; LAVIS LayerNorm default eps
    else:
        act, eps = str(t.dense_act_fn), float(v.layer_norm_eps)
    return SeViLAConfig(vision=vision, qformer=qformer, t5=t5, n_query=int(hf_config.num_query_tokens),
                        max_text_len=max_text_len, image_size=int(v.image_size), ln_vision_eps=eps,
                        t5_dense_act_fn=act)


def blip2_weight_files(hf_dir: str | Path) -> list[Path]:
    """The weight files of an HF directory: safetensors (single or sharded with an index) first, else .bin."""
    hf_dir = Path(hf_dir)
    for index_name, single in ((_ST_INDEX, "model.safetensors"), (_BIN_INDEX, "pytorch_model.bin")):
        if (hf_dir / single).is_file():
            return [hf_dir / single]
        if (hf_dir / index_name).is_file():
            try:
                weight_map = json.loads((hf_dir / index_name).read_text(encoding="utf-8"))["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise CheckpointError(f"{hf_dir / index_name}: not a shard index ({e})") from e
            files = [hf_dir / name for name in dict.fromkeys(weight_map.values())]
            absent = [str(f) for f in files if not f.is_file() or f.resolve().parent != hf_dir.resolve()]
            if absent:
                raise CheckpointError(f"{hf_dir / index_name}: shards missing or outside the directory: {absent}")
            return files
    raise CheckpointError(f"{hf_dir}: no model.safetensors, {_ST_INDEX}, pytorch_model.bin or {_BIN_INDEX}")


_BLIP2_RULES: tuple[tuple[re.Pattern, tuple[str, ...]], ...] = tuple(
    (re.compile(p), t) for p, t in (
        (r"vision_model\.post_layernorm\.(weight|bias)", ("localizer.ln_vision.\\1", "answerer.ln_vision.\\1")),
        (r"vision_model\.(embeddings|encoder)\.(.+)", ("vision.\\1.\\2",)),
        (r"qformer\.encoder\.layer\.\d+\.(intermediate|output)\.(dense|LayerNorm)\.(weight|bias)", ()),  # text FFN
        (r"qformer\.embeddings\..+", ()),  # text embeddings (only Blip2 models that read text through the Q-Former)
        (r"qformer\.(.+)", ("localizer.qformer.\\1", "answerer.qformer.\\1")),
        (r"query_tokens", ("localizer.query_tokens", "answerer.query_tokens")),
        (r"language_projection\.(weight|bias)", ("localizer.proj.\\1", "answerer.proj.\\1")),
        (r"language_model\.(.+)", ("t5.\\1",)),
    ))


def blip2_plan(keys: Iterable[str], entry: Callable[[str], Entry]) -> KeyPlan:
    """HF BLIP-2 names -> ours. An empty target tuple means 'known and unused' (dropped)."""
    plan = KeyPlan()
    for key in keys:
        for pattern, targets in _BLIP2_RULES:
            m = pattern.fullmatch(key)
            if m is None:
                continue
            if not targets:
                plan.dropped.append(key)
            for t in targets:
                plan.add(m.expand(t), entry(key))
            break
        else:
            plan.unexpected.append(key)
    return plan


def load_blip2_weights(model: nn.Module, hf_dir: str | Path, *, strict: bool = True) -> WeightsReport:
    """Copy an HF BLIP-2 directory's weights into `model`: ViT, Flan-T5, and BLIP-2's Q-Former into both bridges."""
    hf_dir = Path(hf_dir)
    read_blip2_config(hf_dir)  # it is a BLIP-2 Flan-T5 directory
    with _Source.from_files(blip2_weight_files(hf_dir)) as src:
        plan = blip2_plan(src.keys(), src.entry)
        plan.notes.append("both Q-Formers start from BLIP-2's (vision post_layernorm -> both ln_vision)")
        return _apply(model, plan, str(hf_dir), CheckpointKind.HF_BLIP2, strict=strict)


def build_from_blip2_dir(hf_dir: str | Path, *, numerics: Numerics = Numerics.LAVIS, max_text_len: int = 77,
                         with_tokenizer: bool = True) -> tuple[nn.Module, WeightsReport]:
    """A SeViLA whose every part comes from a local BLIP-2 Flan-T5 directory (nothing downloaded), with the
    directory's tokenizer attached. Both modules start as BLIP-2 (paper §3.1: the Localizer and the Answerer are
    both initialised from BLIP-2)."""
    hf_dir = Path(hf_dir)
    config = config_from_blip2(read_blip2_config(hf_dir), numerics, max_text_len)
    model = _empty_model(config)
    if with_tokenizer:
        _attach_dir_tokenizer(model, hf_dir)
    report = load_blip2_weights(model, hf_dir, strict=True)
    return model, report


def _attach_dir_tokenizer(model, hf_dir: Path) -> None:
    try:
        tok = _load_tok(hf_dir)
    except FileNotFoundError:
        log.warning("%s holds no tokenizer; attach one before answering questions", hf_dir)
        return
    model.attach_tokenizer(tok)


# =============================================================================================================
# 5. LAVIS / official SeViLA checkpoints
# =============================================================================================================

#: Q-Former (LAVIS BertModel names after `Qformer.` / `Qformer_loc.`) -> HF Blip2QFormerModel names.
_QFORMER_RULES: tuple[tuple[re.Pattern, str], ...] = tuple((re.compile(p), t) for p, t in (
    (r"bert\.embeddings\.LayerNorm\.(weight|bias)", "layernorm.\\1"),
    (r"bert\.encoder\.layer\.(\d+)\.(attention|crossattention)\.self\.(query|key|value)\.(weight|bias)",
     "encoder.layer.\\1.\\2.attention.\\3.\\4"),
    (r"bert\.encoder\.layer\.(\d+)\.(attention|crossattention)\.output\.(dense|LayerNorm)\.(weight|bias)",
     "encoder.layer.\\1.\\2.output.\\3.\\4"),
    (r"bert\.encoder\.layer\.(\d+)\.(intermediate_query|output_query)\.(dense|LayerNorm)\.(weight|bias)",
     "encoder.layer.\\1.\\2.\\3.\\4"),
))
#: Parts of LAVIS's BERT Q-Former that BLIP-2-T5 sets to None (sevila.py: `Qformer.cls = None`, word/position
#: embeddings None, each layer's text `intermediate`/`output` None) and the `position_ids` buffer they leave behind.
_QFORMER_UNUSED = re.compile(
    r"cls\..+|bert\.pooler\..+|bert\.embeddings\.(position_ids|word_embeddings\..+|position_embeddings\..+)"
    r"|bert\.encoder\.layer\.\d+\.(intermediate|output)\.(dense|LayerNorm)\.(weight|bias)")

#: EVA ViT-g (LAVIS eva_vit.py) -> HF Blip2VisionModel, as transformers' BLIP-2 conversion script renames it.
_EVA_RULES: tuple[tuple[re.Pattern, str], ...] = tuple((re.compile(p), t) for p, t in (
    (r"cls_token", "embeddings.class_embedding"),
    (r"pos_embed", "embeddings.position_embedding"),
    (r"patch_embed\.proj\.(weight|bias)", "embeddings.patch_embedding.\\1"),
    (r"blocks\.(\d+)\.norm1\.(weight|bias)", "encoder.layers.\\1.layer_norm1.\\2"),
    (r"blocks\.(\d+)\.norm2\.(weight|bias)", "encoder.layers.\\1.layer_norm2.\\2"),
    (r"blocks\.(\d+)\.attn\.qkv\.weight", "encoder.layers.\\1.self_attn.qkv.weight"),
    (r"blocks\.(\d+)\.attn\.proj\.(weight|bias)", "encoder.layers.\\1.self_attn.projection.\\2"),
    (r"blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", "encoder.layers.\\1.mlp.\\2.\\3"),
))
_EVA_QV_BIAS = re.compile(r"blocks\.(\d+)\.attn\.(q_bias|v_bias)")
#: EVA's final norm / head are not part of BLIP-2's visual path (LAVIS returns the block output, then ln_vision).
_EVA_UNUSED = re.compile(r"(norm|fc_norm|head)\.(weight|bias)")
_BLOCK = re.compile(r"blocks\.(\d+)\.")

#: Module-level LAVIS names -> (bridge part, our sub-name); the `_loc` ones are the Localizer's.
_LAVIS_BRIDGE: dict[str, tuple[str, str]] = {
    "query_tokens": ("answerer", "query_tokens"),
    "query_tokens_loc": ("localizer", "query_tokens"),
}
_LAVIS_PREFIX: tuple[tuple[str, str, str], ...] = (  # (LAVIS prefix, bridge, our sub-prefix); longest first
    ("Qformer_loc.", "localizer", "qformer."),
    ("Qformer.", "answerer", "qformer."),
    ("t5_proj_loc.", "localizer", "proj."),
    ("t5_proj.", "answerer", "proj."),
    ("ln_vision_loc.", "localizer", "ln_vision."),
    ("ln_vision.", "answerer", "ln_vision."),
)


def lavis_plan(keys: Iterable[str], entry: Callable[[str], Entry], layout: LavisLayout = LavisLayout.SEVILA,
               n_vision_layers: int | None = None) -> KeyPlan:
    """LAVIS (official SeViLA / BLIP-2) names -> ours. EVA blocks past `n_vision_layers` are dropped (LAVIS builds
    ViT-g with 39 of EVA's 40 blocks and loads non-strictly)."""
    layout = LavisLayout(layout)
    keys = list(keys)
    plan = KeyPlan()
    qv: dict[str, dict[str, str]] = {}

    def bridges(default: str) -> tuple[str, ...]:
        if layout is LavisLayout.BLIP2:
            return BRIDGES  # a BLIP-2 checkpoint's single bridge initialises both modules
        return (default,)

    loc_keys = [k for k in keys if k.startswith(("Qformer_loc.", "t5_proj_loc.", "ln_vision_loc.")) or
                k == "query_tokens_loc"]
    if layout is LavisLayout.BLIP2 and loc_keys:
        raise CheckpointError(f"layout=blip2 but the checkpoint has Localizer keys ({_head(loc_keys, 3)}): it is a "
                              "SeViLA checkpoint, load it with layout=sevila")
    for key in keys:
        if key in _LAVIS_BRIDGE:
            part, sub = _LAVIS_BRIDGE[key]
            for b in bridges(part):
                plan.add(f"{b}.{sub}", entry(key))
            continue
        for prefix, part, sub in _LAVIS_PREFIX:
            if key.startswith(prefix):
                rest = key[len(prefix):]
                if prefix.startswith("Qformer"):
                    name = _rename(rest, _QFORMER_RULES)
                    if name is None:
                        (plan.dropped if _QFORMER_UNUSED.fullmatch(rest) else plan.unexpected).append(key)
                        break
                else:
                    name = rest
                for b in bridges(part):
                    plan.add(f"{b}.{sub}{name}", entry(key))
                break
        else:
            if key.startswith("visual_encoder."):
                rest = key[len("visual_encoder."):]
                block = _BLOCK.match(rest)
                if block and n_vision_layers is not None and int(block.group(1)) >= n_vision_layers:
                    plan.dropped.append(key)
                elif (m := _EVA_QV_BIAS.fullmatch(rest)) is not None:
                    qv.setdefault(m.group(1), {})[m.group(2)] = key
                elif (name := _rename(rest, _EVA_RULES)) is not None:
                    plan.add(f"vision.{name}", entry(key))
                elif _EVA_UNUSED.fullmatch(rest):
                    plan.dropped.append(key)
                else:
                    plan.unexpected.append(key)
            elif key.startswith("t5_model."):
                plan.add("t5." + key[len("t5_model."):], entry(key))
            else:
                plan.unexpected.append(key)
    for layer, pair in qv.items():
        if set(pair) != {"q_bias", "v_bias"}:
            plan.unexpected += list(pair.values())  # half a bias cannot be placed
            continue
        q, v = entry(pair["q_bias"]), entry(pair["v_bias"])
        # EVA adds no key bias: qkv bias = [q_bias, 0, v_bias] (LAVIS eva_vit.Attention; HF conversion read_in_q_v_bias)
        plan.add(f"vision.encoder.layers.{layer}.self_attn.qkv.bias", Entry(
            f"{pair['q_bias']} + {pair['v_bias']}",
            lambda q=q, v=v: torch.cat([q.get(), torch.zeros_like(q.get()), v.get()]),
            lambda q=q, v=v: (q.shape()[0] + q.shape()[0] + v.shape()[0],) if len(q.shape()) == len(v.shape()) == 1
            else (-1,)))
    return plan


def _rename(name: str, rules: Sequence[tuple[re.Pattern, str]]) -> str | None:
    for pattern, target in rules:
        m = pattern.fullmatch(name)
        if m is not None:
            return m.expand(target)
    return None


def load_lavis_checkpoint(model: nn.Module, path: str | Path, layout: LavisLayout = LavisLayout.SEVILA, *,
                          strict: bool = True) -> WeightsReport:
    """Load an official SeViLA `.pth` (or a LAVIS BLIP-2 one with layout=BLIP2) into `model`; parts the file does
    not hold (e.g. a Localizer-only checkpoint leaves the Answerer, ViT and T5) are left as they are, and reported."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    state = _state_dict_of(_torch_load(path, "checkpoint", mmap=True), path)
    with _Source.from_state(state, path) as src:
        n_layers = model.vision.config.num_hidden_layers if hasattr(model, "vision") else None
        plan = lavis_plan(src.keys(), src.entry, layout, n_layers)
        return _apply(model, plan, str(path), CheckpointKind.LAVIS, strict=strict)


# =============================================================================================================
# 6. One entry point for any source
# =============================================================================================================


def detect_kind(path: str | Path) -> CheckpointKind:
    """Tell the three formats apart by their files (never by guessing from names inside)."""
    path = Path(path)
    if path.is_dir():
        if (path / WEIGHTS_FILE).is_file():
            return CheckpointKind.SEVILA
        if (path / "config.json").is_file():
            return CheckpointKind.HF_BLIP2
        raise CheckpointError(f"{path}: neither a SeViLA checkpoint ({WEIGHTS_FILE}) nor a transformers BLIP-2 "
                              "directory (config.json)")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file or directory")
    if path.suffix == ".safetensors":
        return CheckpointKind.SEVILA
    if path.suffix in (".pth", ".pt", ".bin"):
        return CheckpointKind.LAVIS
    raise CheckpointError(f"{path}: unknown checkpoint file type {path.suffix!r} (expected a directory, "
                          ".safetensors, or a LAVIS .pth)")


def load_into(model: nn.Module, path: str | Path, *, layout: LavisLayout = LavisLayout.SEVILA,
              strict: bool = True) -> WeightsReport:
    """Load any supported checkpoint into an existing model; returns (and logs) what it set."""
    kind = detect_kind(path)
    if kind is CheckpointKind.SEVILA:
        return load_sevila(path, model, strict=strict)[1]
    if kind is CheckpointKind.HF_BLIP2:
        return load_blip2_weights(model, path, strict=strict)
    return load_lavis_checkpoint(model, path, layout, strict=strict)


def load_for_inference(weights: str | Path, backbone: str | Path | None = None, *,
                       layout: LavisLayout = LavisLayout.SEVILA, numerics: Numerics = Numerics.LAVIS
                       ) -> tuple[nn.Module, list[WeightsReport]]:
    """A ready model from `weights` (our checkpoint dir, an HF BLIP-2 dir, or a LAVIS .pth), with `backbone` (an
    HF BLIP-2 dir) supplying whatever the weights do not hold. Every part ends up loaded (never left random), and the
    reports say from where, in load order."""
    kind = detect_kind(weights)
    reports: list[WeightsReport] = []
    if kind is CheckpointKind.HF_BLIP2:
        if backbone is not None:
            raise CheckpointError(f"{weights} is a complete BLIP-2 directory; a backbone is not needed")
        model, rep = build_from_blip2_dir(weights, numerics=numerics)
        reports.append(rep)
    elif kind is CheckpointKind.SEVILA:
        header = read_header(weights)
        if backbone is None:
            model, rep = load_sevila(weights)
            reports.append(rep)
        else:
            if header.model_config is not None:
                from .model import SeViLAConfig  # noqa: PLC0415

                config = SeViLAConfig.from_dict(header.model_config)
            else:  # a training checkpoint: the backbone directory gives the sizes
                config = config_from_blip2(read_blip2_config(backbone), numerics)
            model, rep = _with_backbone(config, _checkpoint_tokenizer(header), backbone)
            reports += [rep, load_sevila(weights, model)[1]]
    else:
        if backbone is None:
            raise CheckpointError(f"{weights}: a LAVIS/SeViLA .pth holds the bridges (and maybe the ViT/T5) in LAVIS "
                                  "form; give the BLIP-2 backbone directory as well (CLI: --backbone)")
        model, rep = build_from_blip2_dir(backbone, numerics=numerics)
        reports += [rep, load_lavis_checkpoint(model, weights, layout)]
    if getattr(model, "tokenizer", None) is None:
        raise CheckpointError(f"{weights}: no tokenizer found (expected {TOKENIZER_DIR}/ beside our checkpoint, or "
                              "tokenizer files in the BLIP-2 directory)")
    return model, reports
