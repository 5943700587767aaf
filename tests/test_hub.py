"""`maest push` / `push_to_hub`, offline: the Hub client is intercepted and the exact commit is checked; failures give
clear errors and leave the directory as it was."""

import hashlib
import json
import shutil
from pathlib import Path

import httpx2
import pytest
import torch
from huggingface_hub import HfApi, ModelCard, constants
from huggingface_hub.errors import HfHubHTTPError

from maest import MAESTForAudioClassification
from maest.cli import main
from maest.hub import HubError, ModelDirectoryError, push_model_to_hub, push_to_hub
from maest.model_cards import write_model_card
from maest.modeling import MAEST_AUTO_MAP as AUTO_MAP

MODEL_FILES = {
    "config.json",
    "preprocessor_config.json",
    "model.safetensors",
    "configuration_maest.py",
    "modeling_maest.py",
    "feature_extraction_maest.py",
    "README.md",
}


def _snapshot(directory: Path) -> dict:
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


class FakeHub:
    """Stands in for the Hub: records `create_repo` and `create_commit` calls and the bytes each file would send."""

    def __init__(self, fail_on=None, error=None):
        self.repos, self.commits = [], []
        self.fail_on, self.error = fail_on, error

    def create_repo(self, api, repo_id, **kwargs):
        self.repos.append({"repo_id": repo_id, **kwargs})
        if self.fail_on == "create_repo":
            raise self.error
        from huggingface_hub import RepoUrl

        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def create_commit(self, api, repo_id, operations, **kwargs):
        if self.fail_on == "create_commit":
            raise self.error
        files = {}
        for operation in operations:
            source = operation.path_or_fileobj
            files[operation.path_in_repo] = Path(source).read_bytes() if isinstance(source, str) else bytes(source)
        self.commits.append({"repo_id": repo_id, "files": files, **kwargs})
        return f"https://huggingface.co/{repo_id}/commit/0123"


@pytest.fixture
def hub(monkeypatch):
    """Online as far as `maest` can tell, with `HfApi` intercepted."""
    fake = FakeHub()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(HfApi, "create_repo", lambda api, repo_id, **kwargs: fake.create_repo(api, repo_id, **kwargs))
    monkeypatch.setattr(
        HfApi, "create_commit", lambda api, repo_id, operations, **kwargs: fake.create_commit(api, repo_id, operations, **kwargs)
    )
    return fake


@pytest.fixture
def model_dir(tmp_path, small_model_dir):
    directory = tmp_path / "maest-small"
    shutil.copytree(small_model_dir, directory)
    return directory


def _http_error(status: int) -> HfHubHTTPError:
    request = httpx2.Request("POST", "https://huggingface.co/api/repos/create")
    return HfHubHTTPError(f"{status} Client Error", response=httpx2.Response(status, request=request))


def test_push_sends_model_code_and_card_in_one_commit(tmp_path, model_dir, hub):
    write_model_card(
        model_dir, base_model="my-org/maest-30s",
        probe_results={"task": "genre", "roc_auc": 0.87, "average_precision": 0.21},
    )
    before = _snapshot(model_dir)
    push_to_hub(model_dir, "my-org/maest-small", private=True, commit_message="First upload", token="hf_test")

    assert hub.repos == [{"repo_id": "my-org/maest-small", "private": True, "token": "hf_test", "exist_ok": True}]
    assert len(hub.commits) == 1
    commit = hub.commits[0]
    assert commit["repo_id"] == "my-org/maest-small"
    assert commit["commit_message"] == "First upload" and commit["token"] == "hf_test"
    assert set(commit["files"]) == MODEL_FILES
    # Exactly the local files, byte for byte (the card too: it existed).
    for name, content in commit["files"].items():
        assert content == (model_dir / name).read_bytes(), name
    config = json.loads(commit["files"]["config.json"])
    assert config["model_type"] == "maest" and config["auto_map"] == AUTO_MAP
    feature_extractor = json.loads(commit["files"]["preprocessor_config.json"])
    assert feature_extractor["auto_map"] == {"AutoFeatureExtractor": AUTO_MAP["AutoFeatureExtractor"]}
    card = ModelCard(commit["files"]["README.md"].decode())
    assert card.data.base_model == "my-org/maest-30s"
    assert {(r.dataset_type, r.metric_type): r.metric_value for r in card.data.eval_results} == {
        ("genre", "roc_auc"): 0.87, ("genre", "average_precision"): 0.21,
    }
    assert _snapshot(model_dir) == before

    # The uploaded files alone make a repo that loads with the package and gives the same outputs.
    repo = tmp_path / "repo"
    repo.mkdir()
    for name, content in commit["files"].items():
        (repo / name).write_bytes(content)
    inputs = torch.randn(2, 316, 96)
    with torch.no_grad():
        expected = MAESTForAudioClassification.from_pretrained(model_dir).eval()(inputs).logits
        actual = MAESTForAudioClassification.from_pretrained(repo).eval()(inputs).logits
    torch.testing.assert_close(actual, expected)


def test_missing_card_is_generated_for_the_upload_only(model_dir, hub):
    before = _snapshot(model_dir)
    assert not (model_dir / "README.md").exists()
    push_to_hub(model_dir, "my-org/maest-small")
    files = hub.commits[0]["files"]
    assert set(files) == MODEL_FILES
    card = ModelCard(files["README.md"].decode())
    assert card.data.license == "cc-by-nc-sa-4.0"
    assert 'model="my-org/maest-small"' in card.text
    assert _snapshot(model_dir) == before  # the directory was only read


def test_offline_push_fails_clearly_and_sends_nothing(model_dir, monkeypatch):
    # conftest sets HF_HUB_OFFLINE=1.
    assert constants.is_offline_mode()
    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda *args, **kwargs: calls.append(args))
    monkeypatch.setattr(HfApi, "create_commit", lambda *args, **kwargs: calls.append(args))
    before = _snapshot(model_dir)
    with pytest.raises(HubError, match="offline mode is on \\(HF_HUB_OFFLINE=1\\)"):
        push_to_hub(model_dir, "my-org/maest-small")
    assert calls == []
    assert _snapshot(model_dir) == before


@pytest.mark.parametrize(
    "fail_on, error, message",
    [
        ("create_repo", _http_error(401), "not authorized to write my-org/maest-small \\(HTTP 401\\)"),
        ("create_commit", _http_error(403), "not authorized to write my-org/maest-small \\(HTTP 403\\)"),
        ("create_repo", httpx2.ConnectError("Name or service not known"), "could not reach the Hugging Face Hub"),
        ("create_commit", _http_error(500), "the Hub refused the push"),
    ],
)
def test_hub_failures_are_clear_and_leave_the_directory_intact(model_dir, hub, fail_on, error, message):
    hub.fail_on, hub.error = fail_on, error
    before = _snapshot(model_dir)
    with pytest.raises(HubError, match=message) as raised:
        push_to_hub(model_dir, "my-org/maest-small")
    assert f"{model_dir} is unchanged" in str(raised.value)
    assert hub.commits == []
    assert _snapshot(model_dir) == before


def _break(directory: Path, how: str) -> str:
    if how == "no preprocessor":
        (directory / "preprocessor_config.json").unlink()
        return "preprocessor_config.json is missing"
    if how == "no code":
        (directory / "modeling_maest.py").unlink()
        return "modeling_maest.py is missing"
    if how == "no weights":
        (directory / "model.safetensors").unlink()
        return "no weights"
    config = json.loads((directory / "config.json").read_text())
    if how == "incomplete auto_map":
        del config["auto_map"]["AutoModel"]
        message = "auto_map lacks"
    elif how == "labels do not fit":
        config["id2label"] = {"0": "one", "1": "two"}
        config["label2id"] = {"one": 0, "two": 1}
        message = "the classifier has 7 outputs but config.json has 2 labels"
    elif how == "AST format":
        config["model_type"] = "audio-spectrogram-transformer"
        message = "convert it first"
    (directory / "config.json").write_text(json.dumps(config))
    return message


@pytest.mark.parametrize(
    "how", ["no preprocessor", "no code", "no weights", "incomplete auto_map", "labels do not fit", "AST format"]
)
def test_incomplete_directories_are_refused_before_anything_is_sent(model_dir, hub, how):
    message = _break(model_dir, how)
    before = _snapshot(model_dir)
    with pytest.raises(ModelDirectoryError, match=message):
        push_to_hub(model_dir, "my-org/maest-small")
    assert hub.repos == [] and hub.commits == []
    assert _snapshot(model_dir) == before


def test_push_cli(model_dir, hub, capsys):
    (model_dir / "notes.txt").write_text("local notes, not for the Hub")
    status = main(["push", str(model_dir), "my-org/maest-small", "--private", "--commit-message", "v1", "--token", "hf_x"])
    assert status == 0
    out = capsys.readouterr().out
    assert "pushed 7 files to my-org/maest-small" in out and "not uploaded: notes.txt" in out
    assert hub.repos[0]["private"] is True and hub.repos[0]["token"] == "hf_x"
    assert hub.commits[0]["commit_message"] == "v1"
    assert set(hub.commits[0]["files"]) == MODEL_FILES


def test_push_cli_errors_are_one_line_with_exit_status_2(model_dir, monkeypatch, capsys):
    assert main(["push", str(model_dir), "my-org/maest-small"]) == 2  # offline (conftest)
    err = capsys.readouterr().err
    assert "HF_HUB_OFFLINE=1" in err and len(err.strip().splitlines()) == 1
    assert main(["push", str(model_dir / "missing"), "my-org/maest-small"]) == 2
    err = capsys.readouterr().err
    assert "is not a directory" in err and len(err.strip().splitlines()) == 1


def test_push_model_object(small_model_dir, hub):
    model = MAESTForAudioClassification.from_pretrained(small_model_dir)
    push_model_to_hub(
        model, "my-org/maest-small", card_kwargs={"base_model": "my-org/maest-30s"}, private=True,
        commit_message="Upload", tags=["genre"],
    )
    assert len(hub.commits) == 1 and hub.commits[0]["commit_message"] == "Upload" and hub.repos[0]["private"]
    files = hub.commits[0]["files"]
    assert set(files) == MODEL_FILES
    assert json.loads(files["config.json"])["auto_map"] == AUTO_MAP
    assert json.loads(files["preprocessor_config.json"])["max_length"] == model.config.max_length
    card = ModelCard(files["README.md"].decode())
    assert card.data.base_model == "my-org/maest-30s" and "genre" in card.data.tags
