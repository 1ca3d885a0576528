"""workbench.io: atomic writes keep the old file on failure, thread counts are restored."""

import json

import pytest
import torch

from workbench import io


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "a.json"
    io.write_json(path, {"b": 1, "a": 2})
    assert path.read_text() == '{\n  "a": 2,\n  "b": 1\n}\n'
    io.write_text(path, "new")
    assert path.read_text() == "new"
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.json"]


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "state.pt"
    io.write_bytes(path, b"old")
    with pytest.raises(RuntimeError), io.atomic_path(path) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert path.read_bytes() == b"old"
    assert not tmp.exists()


def test_atomic_path_serves_any_writer(tmp_path):
    path = tmp_path / "t.pt"
    with io.atomic_path(path) as tmp:
        torch.save({"x": torch.arange(3)}, tmp)
    assert torch.load(path)["x"].tolist() == [0, 1, 2]
    assert json.loads(io.write_json(tmp_path / "l.json", [1], indent=None).read_text()) == [1]


def test_torch_threads_restores_the_count_even_on_error():
    before = torch.get_num_threads()
    with pytest.raises(ValueError), io.torch_threads(1):
        assert torch.get_num_threads() == 1
        raise ValueError
    assert torch.get_num_threads() == before
    with io.torch_threads(None):
        assert torch.get_num_threads() == before


def test_lazy_exports_resolve_on_use_and_reject_unknown_names():
    import workbench.analyse as pkg

    assert pkg.AnalyseConfig.__module__ == "workbench.analyse.config"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        pkg.nope  # noqa: B018


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_atomic_files_get_the_umask_mode_whatever_the_writer(tmp_path, mask):
    """safetensors creates 0o600 files; the finished file has the mode open() would give."""
    import os

    from safetensors.torch import save_file

    before = os.umask(mask)
    try:
        path = tmp_path / "w.safetensors"
        with io.atomic_path(path) as tmp:
            save_file({"w": torch.zeros(2)}, str(tmp))
        assert io._umask() == mask
    finally:
        os.umask(before)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask
