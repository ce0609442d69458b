"""The one place that copies weights into a SeViLA model, whatever their source (docs/design.md §2, trap "checkpoints
holding only one module, so users must merge by hand": a load says what it set).

A source (our safetensors, an HF BLIP-2 directory, a LAVIS .pth) is read through a `TensorSource` and mapped onto
our parameter names as a `KeyPlan` (sevila.weights.ours for ours, sevila.weights.transformers_blip2 and
sevila.weights.lavis for
the conversions); `apply_plan` then checks and copies. Its rules: a part (`vision`, `t5`, `localizer`,
`answerer`) is set only when the source holds ALL of its tensors with the right shapes (no silent half-loaded
Q-Former); parts the source does not mention are left untouched and listed as such; source keys BLIP-2-T5
deliberately does not use are dropped and listed; any other key is "unexpected" and, with `strict=True`, an error.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from safetensors import safe_open
from torch import nn

from sevila.model.modeling import build_sevila
from sevila.weights.checkpoint_dir import CheckpointError, CheckpointKind, WeightsReport, brief_list, torch_load

log = logging.getLogger(__name__)

#: The parts of a SeViLA model a checkpoint can hold; a parameter's part is the first component of its name.
PARTS: tuple[str, ...] = ("vision", "t5", "localizer", "answerer")
BRIDGES: tuple[str, ...] = ("localizer", "answerer")


def part_of(name: str) -> str:
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


def tied_aliases(model: nn.Module, canonical: Mapping[str, torch.Tensor]) -> dict[str, str]:
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



def apply_plan(model: nn.Module, plan: KeyPlan, source: str, kind: CheckpointKind, *, strict: bool,
           step: int | None = None) -> WeightsReport:
    """Check `plan` against the model part by part, then copy. Nothing is copied when a check fails."""
    canonical = canonical_state(model)
    aliases = tied_aliases(model, canonical)
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
        by_part.setdefault(part_of(name), set()).add(name)
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
            problems.append(f"incomplete parts {partial}: missing {len(missing)} tensors ({brief_list(missing, 8)})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected keys ({brief_list(sorted(unexpected), 8)})")
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



class TensorSource:
    """Read-only view of a checkpoint's tensors (safetensors shards read lazily, or an in-memory state dict)."""

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}
        self._stack = contextlib.ExitStack()

    @classmethod
    def from_files(cls, files: Sequence[Path]) -> "TensorSource":
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
                src._add_state(state_dict_of(torch_load(path, "checkpoint", mmap=True), path), path)
        return src

    @classmethod
    def from_state(cls, state: Mapping[str, Any], where: Path | str) -> "TensorSource":
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

    def __enter__(self) -> "TensorSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def state_dict_of(obj: Any, path: Path) -> Mapping[str, Any]:
    """LAVIS saves `{"model": state_dict, "optimizer": ..., "config": ..., "epoch": ...}`; accept a bare state dict."""
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        return obj["model"]
    if isinstance(obj, Mapping) and obj and all(torch.is_tensor(v) for v in obj.values()):
        return obj
    keys = sorted(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__
    raise CheckpointError(f"{path}: neither a state dict nor a LAVIS checkpoint with a 'model' state dict "
                          f"(top level: {keys})")



def empty_model(config, tokenizer=None):
    """A SeViLA with uninitialised storage (built on the meta device, then given real memory): for loads that
    overwrite every tensor, so the 4B-parameter random init is skipped. The model has no buffers to recompute."""
    model = build_sevila(config, device="meta")
    ties = tied_aliases(model, canonical_state(model))  # e.g. t5.encoder.embed_tokens.weight -> t5.shared.weight
    model = model.to_empty(device="cpu")  # meta -> cpu makes new Parameters, one per module: ties are lost ...
    for alias, canon in ties.items():  # ... and restored here
        owner, attr = alias.rsplit(".", 1)
        setattr(model.get_submodule(owner), attr, model.get_parameter(canon))
    if tokenizer is not None:
        model.attach_tokenizer(tokenizer)
    return model

