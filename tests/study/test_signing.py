"""study.signing: Tune's saved state is signed with a per-user key and verified before a resume
unpickles it."""

import stat

import pytest

from study import signing


@pytest.fixture
def key_file(tmp_path, monkeypatch):
    path = tmp_path / "config" / "signing.key"
    monkeypatch.setattr(signing, "KEY_FILE", path)
    return path


def _experiment(tune_dir, name="exp"):
    folder = tune_dir / name
    folder.mkdir(parents=True)
    (folder / "tuner.pkl").write_bytes(b"tuner state")
    (folder / "experiment_state-1.json").write_text('{"trials": []}')
    (folder / "searcher-state-1.pkl").write_bytes(b"searcher state")
    (folder / "result.json").write_text("{}")  # not unpickled on restore: not signed
    return folder


def test_the_key_is_made_once_and_only_its_user_can_read_it(key_file):
    first = signing.user_key()
    assert len(first) == 32 and signing.user_key() == first
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_signed_state_verifies_and_any_change_or_new_file_does_not(tmp_path, key_file):
    tune_dir = tmp_path / "tune"
    folder = _experiment(tune_dir)
    assert signing.unsigned(tune_dir) == [
        "exp/experiment_state-1.json", "exp/searcher-state-1.pkl", "exp/tuner.pkl"
    ]  # fmt: skip
    signing.sign(tune_dir, "exp")
    assert signing.unsigned(tune_dir) == []
    (folder / "tuner.pkl").write_bytes(b"tuner statf")  # one byte changed
    (folder / "callback-states-2.pkl").write_bytes(b"new")  # never signed
    assert signing.unsigned(tune_dir) == ["exp/callback-states-2.pkl", "exp/tuner.pkl"]
    (folder / "tuner.pkl").write_bytes(b"tuner state")
    (folder / "callback-states-2.pkl").unlink()
    assert signing.unsigned(tune_dir) == []
    # Another user's key (or none) does not verify this user's signatures.
    key_file.write_bytes(b"x" * 32)
    assert len(signing.unsigned(tune_dir)) == 3


def test_the_staging_folder_tune_saved_in_is_signed_under_its_experiment(tmp_path, key_file):
    tune_dir = tmp_path / "tune"
    staging = _experiment(tmp_path / "staging" / "exp", "driver_artifacts")
    signing.note_staging(staging)
    assert signing.staging_folder("exp") == staging
    signing.sign(tune_dir, "exp", signing.staging_folder("exp"))
    # The experiment folder holds the same bytes once Tune copied them there.
    _experiment(tune_dir)
    assert signing.unsigned(tune_dir) == []
