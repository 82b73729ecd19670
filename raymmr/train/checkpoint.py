"""DeepSpeed checkpoints through Ray Train: save on every rank, verify before resuming.

Every rank calls ``engine.save_checkpoint`` (a collective) into its own fresh directory and, last,
``seal``s it with a ``rank-<r>.done`` marker that lists every file of its part with its size; Ray
Train merges the rank directories into one persisted checkpoint. A checkpoint is *complete* when
the marker of every rank of the world that wrote it is there and every file a marker lists is
there with its size: an upload stopped halfway (a node lost; files reach object storage in no
set order, the marker perhaps first) is never resumed from.
The tag is fixed (``TAG``) rather than DeepSpeed's ``latest`` file.

Checkpoint files hold pickled optimizer state written by DeepSpeed from this run's own workers;
they are loaded only from run directories the user points at (never from data shards).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from raymmr import storage

TAG = "state"
META = "raymmr_checkpoint.json"
PROBE = "probe.safetensors"  # the final checkpoint's live-model outputs (worker.probe_live_model)
DONE = "rank-{rank}.done"
RNG_STATE = "rng-rank-{rank}.json"  # the rank's torch (CPU, CUDA), numpy and Python random states
PART_PREFIX = "raymmr-ckpt-"  # + "<pid>-step<step>-r<rank>-": a rank's part in the node's temp dir


class CheckpointError(RuntimeError):
    pass


@dataclass
class CheckpointMeta:
    step: int
    world_size: int
    zero_stage: int
    stage: str  # "pretrain" | "finetune"


def save(engine, meta: CheckpointMeta, rank: int, client_state: dict) -> str:
    """Write this rank's part of the checkpoint into a new temp dir and return the dir; the caller
    adds its own files, ``seal``s it, reports it and removes it."""
    remove_orphans()
    path = Path(tempfile.mkdtemp(prefix=f"{PART_PREFIX}{os.getpid()}-step{meta.step}-r{rank}-"))
    engine.save_checkpoint(str(path), tag=TAG, client_state=client_state, save_latest=False)
    if rank == 0:
        (path / META).write_text(json.dumps(meta.__dict__))
    return str(path)


def rng_state() -> dict:
    """This process's random states as JSON-safe lists (no pickle): the global torch generator
    (masks, head-mixup draws, model-side perturbations, dropout), the current CUDA device's, numpy's
    and Python's ``random``."""
    import random

    import numpy as np
    import torch

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state().tolist(),
             "numpy": {"kind": kind, "keys": keys.tolist(), "pos": pos, "has_gauss": has_gauss, "gauss": gauss},
             "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state().tolist()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what ``rng_state`` saved (the CUDA state only where this process uses CUDA)."""
    import random

    import numpy as np
    import torch

    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    n = state["numpy"]
    np.random.set_state((n["kind"], np.array(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.set_rng_state(torch.tensor(state["cuda"], dtype=torch.uint8))


def save_rng(directory: str | Path, rank: int) -> None:
    Path(directory, RNG_STATE.format(rank=rank)).write_text(json.dumps(rng_state()))


def restore_rng(checkpoint: str, *, rank: int, same_world: bool) -> bool:
    """After a resume from ``checkpoint`` (a directory or URL): continue this rank's random streams
    where the checkpoint left them. Another world size has other ranks (no saved stream belongs to
    this one) and an older checkpoint has none: those keep the fresh seed. Returns whether restored."""
    saved = storage.join(checkpoint, RNG_STATE.format(rank=rank))
    if not same_world or not storage.exists(saved):
        return False
    set_rng_state(json.loads(storage.read_bytes(saved)))
    return True


def remove_orphans() -> None:
    """Remove the checkpoint parts that processes no longer alive left in this node's temp dir (a
    worker killed between writing its part and the report that uploads and removes it). Parts of
    live processes, such as other trials' workers on this node, are left alone."""
    for part in Path(tempfile.gettempdir()).glob(f"{PART_PREFIX}*"):
        pid = part.name[len(PART_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(part, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def seal(path: str | Path, rank: int, step: int) -> None:
    """The last write of a rank's part: its done-marker, listing every file of the part and its size."""
    root = Path(path)
    files = {p.relative_to(root).as_posix(): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}
    (root / DONE.format(rank=rank)).write_text(json.dumps({"step": step, "files": files}))


def read_meta(path: str | Path) -> CheckpointMeta:
    """The metadata of a checkpoint, local or at a storage URL."""
    where = storage.join(str(path), META)
    try:
        return CheckpointMeta(**json.loads(storage.read_text(where)))
    except FileNotFoundError:
        raise CheckpointError(f"{path} is not a raymmr checkpoint (no {META})") from None


def is_complete(path: str | Path) -> bool:
    """True when the done-marker of every rank that wrote the checkpoint is there and every file
    a marker lists is there with the size it had when written."""
    try:
        meta = read_meta(path)
    except (CheckpointError, ValueError, TypeError):
        return False
    sizes = storage.sizes(str(path))
    for rank in range(meta.world_size):
        marker = DONE.format(rank=rank)
        if marker not in sizes:
            return False
        try:
            listed = json.loads(storage.read_text(storage.join(str(path), marker)))["files"]
        except (ValueError, KeyError, TypeError):
            return False
        if not listed or any(sizes.get(name) != size for name, size in listed.items()):
            return False
    return True


def checkpoints(run_dir: str | Path) -> list[str]:
    """Every checkpoint directory Ray Train persisted under a run (``<run>/ray*/step_*``),
    complete or not; local paths or URLs like ``run_dir``."""
    run_dir = str(run_dir)
    return [storage.join(run_dir, launch, step)
            for launch in storage.names(run_dir) if launch.startswith("ray")
            for step in storage.names(storage.join(run_dir, launch)) if step.startswith("step_")]


def latest_complete(run_dir: str | Path) -> str | None:
    """The newest complete checkpoint under a run directory or run URL, as read from the storage
    Ray persisted it to (any launch of the run: the first, or a ``--resume``)."""
    newest_first = sorted(checkpoints(run_dir), key=lambda c: c.rsplit("step_", 1)[-1], reverse=True)
    return next((c for c in newest_first if is_complete(c)), None)


def local_copy(path: str) -> Path:
    """A checkpoint as a local directory: itself when local, else a copy in this process's cache."""
    return storage.cached_copy(path, "checkpoints")


def needs_universal(meta: CheckpointMeta, world_size: int) -> bool:
    """ZeRO shards the optimizer state by data-parallel rank: a checkpoint written by another
    number of workers loads only through DeepSpeed's universal format."""
    return meta.zero_stage > 0 and meta.world_size != world_size


def universal_copy(source: str, local: Path, *, convert: bool) -> Path:
    """The universal-format conversion of a ZeRO checkpoint (``deepspeed.checkpoint.ds_to_universal``)
    in this node's cache, keyed by the checkpoint's URL; returns the directory that holds ``TAG``.
    Only ``convert=True`` (one process per node) writes it; the others wait at a barrier and read."""
    import os
    import shutil
    from argparse import Namespace

    root = storage.cache_path("universal", str(source))
    if convert and not root.exists():
        from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

        tmp = root.with_name(f"{root.name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        # Our checkpoints carry no Megatron parallelism info: inject DeepSpeed's defaults for it.
        ds_to_universal(Namespace(input_folder=str(local / TAG), output_folder=str(tmp / TAG), num_extract_workers=1,
                                  num_merge_workers=1, keep_temp_folder=False, strict=True, inject_missing_state=True))
        os.replace(tmp, root)
        storage.prune_cache("universal", keep=root)
    return root


def load(engine, path: str | Path, *, world_size: int, universal: Path | None = None) -> tuple[CheckpointMeta, dict]:
    """Load a complete checkpoint (a local dir or a URL, copied into this node's cache) into
    ``engine`` on every rank; returns (meta, client_state). ``universal``: its universal-format
    copy (``universal_copy``), for an engine built with ``load_universal`` (another world size)."""
    if not is_complete(path):
        raise CheckpointError(f"checkpoint {path} is incomplete (missing rank markers); refusing to resume from it")
    meta = read_meta(path)
    if needs_universal(meta, world_size) and universal is None:
        raise CheckpointError(f"checkpoint {path} was written by {meta.world_size} workers with ZeRO-{meta.zero_stage} "
                              f"and this run has {world_size}: it loads only through its universal conversion")
    load_dir = universal if universal is not None else local_copy(str(path))
    try:
        load_path, client_state = engine.load_checkpoint(str(load_dir), tag=TAG)
    except (RuntimeError, ValueError, KeyError, AssertionError) as e:
        if universal is None:
            raise
        raise CheckpointError(f"DeepSpeed could not load the universal conversion of {path} "
                              f"({meta.world_size} -> {world_size} workers, ZeRO-{meta.zero_stage}): {e}") from e
    if load_path is None:
        raise CheckpointError(f"DeepSpeed found no checkpoint under {load_dir}/{TAG}")
    return meta, client_state or {}


def consolidate(path: str | Path):
    """Full fp32 state dict from a (possibly ZeRO-sharded) checkpoint, with DeepSpeed's own
    ``zero_to_fp32`` utility; stage 0 checkpoints hold the full module already."""
    import torch
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    path = local_copy(str(path))
    meta = read_meta(path)
    if meta.zero_stage == 3:
        return get_fp32_state_dict_from_zero_checkpoint(str(path), tag=TAG)
    # Stages 0-2 keep whole parameters in the module file; it is our own checkpoint from this run
    # (DeepSpeed pickles more than tensors in it).
    module = torch.load(path / TAG / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)["module"]
    state = {k: v.float() for k, v in module.items()}
    if meta.zero_stage > 0:
        # The fp32 master weights of the trained parameters live in the ZeRO optimizer shards;
        # frozen ones (the momentum encoders) only in the module file (zero_to_fp32 skips them at stage 1).
        state.update(get_fp32_state_dict_from_zero_checkpoint(str(path), tag=TAG))
    return state
