"""Test helper: what a malicious bundle carries (a pickle that runs a command, a TorchScript module
that writes a file), and a zip rewriter to put them into real torch archives. Nothing here runs a
payload by itself."""
from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import torch
from torch import nn


class Payload:
    """Pickles as a call to os.system(cmd): what a malicious bundle would carry."""

    def __init__(self, cmd: str):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def payload_pickle(marker: Path) -> bytes:
    buf = io.BytesIO()
    torch.save(Payload(f"touch {marker}"), buf)
    return buf.getvalue()


def rewrite_zip(src: Path, dst: Path, edits: dict, add: dict | None = None) -> Path:
    """Copy a torch zip, replacing members (name relative to the top folder -> fn(bytes) -> bytes)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        top = zin.infolist()[0].filename.split("/")[0]
        for info in zin.infolist():
            rel = info.filename.split("/", 1)[1]
            data = zin.read(info)
            zout.writestr(info.filename, edits[rel](data) if rel in edits else data)
        for rel, data in (add or {}).items():
            zout.writestr(f"{top}/{rel}", data)
    return dst


class ReadsFile(nn.Module):
    def __init__(self, filename: str):
        super().__init__()
        self.filename = filename

    def forward(self, x):
        return x + torch.from_file(self.filename, shared=True, size=4)
