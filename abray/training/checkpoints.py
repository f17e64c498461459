"""Where a parameter server's checkpoint lives, and whose it is.

A run checkpoints to `<root>/<run_id>/checkpoint.pt`, where `root` is a storage URI read and written through
`pyarrow.fs`, as Ray Tune does with its own storage: a local path on one machine, `s3://` or `gs://` on a cluster,
so that a server restarted on another node finds its checkpoint. Each run gets its own folder, and the checkpoint
carries the run's id and a fingerprint of its config: a checkpoint of another run, or of this run under another
config, is refused with an error that names it, never resumed.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Optional

import torch

CHECKPOINT_FILE = "checkpoint.pt"


class CheckpointError(RuntimeError):
    """A checkpoint that does not belong to the run that found it, or that cannot be read."""


def config_fingerprint(config_values: dict) -> str:
    """A short hash of a run's whole config (every field, so any change makes another fingerprint)."""
    text = json.dumps(config_values, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def storage_uri(root: str) -> str:
    """`root` as a URI every process can use: URIs (scheme://...) unchanged, local paths made absolute here,
    because actors run in other working directories."""
    return root.rstrip("/") if "://" in root else str(Path(root).expanduser().resolve())


class RunFolder:
    """One run's folder under a storage root: its checkpoint, written atomically, read back, removed."""

    def __init__(self, root: str, run_id: str):
        from pyarrow import fs

        self.uri = f"{storage_uri(root)}/{run_id}"
        self.fs, self.path = fs.FileSystem.from_uri(self.uri)
        self.checkpoint = f"{self.path}/{CHECKPOINT_FILE}"
        self.checkpoint_uri = f"{self.uri}/{CHECKPOINT_FILE}"

    def has_checkpoint(self) -> bool:
        from pyarrow import fs

        return self.fs.get_file_info(self.checkpoint).type != fs.FileType.NotFound

    def save(self, state: dict) -> None:
        """Write `state` (torch-serialisable) as the checkpoint; a crash mid-write leaves the previous one whole."""
        buffer = io.BytesIO()
        torch.save(state, buffer)
        self.fs.create_dir(self.path, recursive=True)
        tmp = self.checkpoint + ".tmp"
        with self.fs.open_output_stream(tmp) as out:
            out.write(buffer.getbuffer())
        self.fs.move(tmp, self.checkpoint)  # a rename on local disks; object stores replace whole objects

    def load(self) -> Optional[dict]:
        """The checkpoint, or None when there is none."""
        if not self.has_checkpoint():
            return None
        try:
            with self.fs.open_input_stream(self.checkpoint) as stream:
                data = stream.readall()
            return torch.load(io.BytesIO(data), weights_only=False)
        except Exception as err:  # truncated, not a torch file, unreadable: say which file
            raise CheckpointError(f"cannot read checkpoint {self.checkpoint_uri}: {type(err).__name__}: {err}") \
                from None

    def remove(self) -> None:
        """Delete the run's folder (a finished run's checkpoint is of no further use)."""
        remove_folder(self.uri)


def check_owner(state: dict, where: str, run_id: str, fingerprint: str) -> None:
    """Refuse a checkpoint that another run, or this run under another config, wrote."""
    theirs = (state.get("run_id"), state.get("config_fingerprint"))
    if theirs != (run_id, fingerprint):
        raise CheckpointError(
            f"checkpoint {where} belongs to run {theirs[0]} (config {theirs[1]}), not to this run {run_id} "
            f"(config {fingerprint}); refusing to resume it. Give this run another storage_path or delete it.")


def remove_folder(uri: str, only_if_empty: bool = False) -> None:
    """Remove the folder at `uri`, with all it holds; with `only_if_empty`, only when it holds nothing. For a folder
    no run writes to any more (a sweep's checkpoint root once its trials are over)."""
    from pyarrow import fs

    filesystem, path = fs.FileSystem.from_uri(storage_uri(uri))
    if filesystem.get_file_info(path).type != fs.FileType.Directory:
        return
    if not only_if_empty or not filesystem.get_file_info(fs.FileSelector(path)):
        filesystem.delete_dir(path)
