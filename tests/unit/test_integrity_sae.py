"""Issue 15, the SAE artefact: "already done?" means one whole save, not a weights file.

Before the fix the weights were written first and the JSON files after them, and the demo
skipped training when ``sae_weights.safetensors`` existed: a save killed in between left
weights beside the previous save's JSON (or none), and nothing noticed.
"""

from __future__ import annotations

import pytest

from workbench.sae import io as sae_io
from workbench.sae.io import SAEFormatError, load_sae, sae_incomplete, save_sae
from workbench.sae.synthetic import signed_identity_sae


class Killed(BaseException):
    """Stands for SIGKILL at the point it is raised."""


def test_a_whole_save_is_complete(tmp_path):
    save_sae(signed_identity_sae(4, k=2), tmp_path / "sae")
    assert sae_incomplete(tmp_path / "sae") is None
    assert "does not exist" in sae_incomplete(tmp_path / "nowhere")


def test_a_save_killed_before_its_weights_is_refused(tmp_path, monkeypatch):
    out = tmp_path / "sae"
    save_sae(signed_identity_sae(4, k=2), out)

    def killed(*args, **kwargs):
        raise Killed

    monkeypatch.setattr(sae_io, "save_file", killed)
    with pytest.raises(Killed):
        save_sae(signed_identity_sae(4, k=1), out)  # a retraining killed while saving
    monkeypatch.undo()
    assert "different saves" in sae_incomplete(out)
    with pytest.raises(SAEFormatError, match="different saves"):
        load_sae(out)
    save_sae(signed_identity_sae(4, k=1), out)  # the rerun saves again: whole
    assert sae_incomplete(out) is None and load_sae(out).k == 1


def test_a_save_killed_before_its_json_leaves_no_weights(tmp_path, monkeypatch):
    out = tmp_path / "sae"
    monkeypatch.setattr(sae_io, "write_json", lambda *a: (_ for _ in ()).throw(Killed()))
    with pytest.raises(Killed):
        save_sae(signed_identity_sae(4, k=2), out)
    assert not (out / sae_io.SAELENS_WEIGHTS).exists()  # the demo's old check sees nothing
    assert sae_incomplete(out) is not None
