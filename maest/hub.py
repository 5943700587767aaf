"""MAEST directories for the Hugging Face Hub: converting a checkpoint into one, and publishing it.

`convert_checkpoint(source, output_dir)` (`maest convert`) turns any published checkpoint layout into a
`save_pretrained` directory with its feature extractor (and, on request, its model card). `push_to_hub(directory,
repo_id)` (`maest push DIR REPO_ID`) uploads a saved MAEST directory as one commit: weights, config with the complete
`auto_map`, feature extractor, the three code files that `trust_remote_code=True` loads, and the model card
(`README.md`; generated when the directory has none). The directory is checked before anything is sent, and it is
only read: a failed push leaves it as it was. `push_model_to_hub(model, repo_id)` does the same for a model object.
"""

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, ModelCard, constants
from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled
from safetensors import safe_open

from maest.utils.errors import MAESTError
from .feature_extraction import MAESTFeatureExtractor
from .model_cards import build_model_card, write_model_card
from .modeling import load_maest, match_published
from .modeling.configuration_maest import MAEST_AUTO_MAP


AUTO_MAP = MAEST_AUTO_MAP
CONFIG_NAME = "config.json"
FEATURE_EXTRACTOR_NAME = "preprocessor_config.json"
CARD_NAME = "README.md"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
# The self-contained sources that `save_pretrained` copies next to the weights (the modules `auto_map` names).
CODE_FILES = tuple(sorted({target.split(".")[0] + ".py" for target in AUTO_MAP.values()}))
FEATURE_EXTRACTOR_AUTO_MAP = {"AutoFeatureExtractor": AUTO_MAP["AutoFeatureExtractor"]}


class HubError(MAESTError, RuntimeError):
    """A push that cannot be done (offline, unauthorized, Hub error); nothing local was changed."""


class ModelDirectoryError(MAESTError, ValueError):
    """A directory that is not a complete, pushable MAEST model; the message lists every problem."""


class OutputDirectoryError(MAESTError, OSError):
    """An output directory that cannot be written (exists without `overwrite`, not writable, is the source)."""


@dataclass
class PushPlan:
    """What `push_to_hub` sends: files from the directory (repo path -> local path) and the model card."""

    directory: Path
    files: dict[str, Path]
    card: str
    card_generated: bool
    skipped: list[str] = field(default_factory=list)

    @property
    def repo_paths(self) -> list[str]:
        return sorted([*self.files, CARD_NAME])


def _read_json(path: Path, problems: list[str]) -> dict | None:
    if not path.is_file():
        problems.append(f"{path.name} is missing")
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        problems.append(f"{path.name} is not valid JSON ({error})")
        return None
    if not isinstance(data, dict):
        problems.append(f"{path.name} does not hold a JSON object")
        return None
    return data


def _weight_files(directory: Path, problems: list[str]) -> list[Path]:
    if (directory / WEIGHTS_NAME).is_file():
        return [directory / WEIGHTS_NAME]
    index_path = directory / WEIGHTS_INDEX_NAME
    if index_path.is_file():
        index = _read_json(index_path, problems)
        if index is None:
            return []
        shards = sorted(set((index.get("weight_map") or {}).values()))
        missing = [shard for shard in shards if not (directory / shard).is_file()]
        if not shards or missing:
            problems.append(f"{WEIGHTS_INDEX_NAME} lists shards that are missing: {missing or 'no shards listed'}")
            return []
        return [index_path, *(directory / shard for shard in shards)]
    others = sorted(path.name for path in directory.glob("*.bin")) + sorted(path.name for path in directory.glob("*.ckpt"))
    hint = f" (found {', '.join(others)}: save with save_pretrained or convert with `maest convert`)" if others else ""
    problems.append(f"no weights: {WEIGHTS_NAME} (or a sharded {WEIGHTS_INDEX_NAME}) is missing{hint}")
    return []


def _check_classifier_shape(weight_files: list[Path], config: dict, problems: list[str]) -> None:
    """The head's output size must be the config's label count, or the pushed model would not load."""
    num_labels = len(config.get("id2label") or {}) or config.get("num_labels")
    for file in weight_files:
        if file.suffix != ".safetensors":
            continue
        try:
            with safe_open(str(file), framework="pt") as weights:
                if "classifier.dense.weight" in weights.keys():
                    outputs = weights.get_slice("classifier.dense.weight").get_shape()[0]
                    if num_labels and outputs != num_labels:
                        problems.append(
                            f"{file.name}: the classifier has {outputs} outputs but config.json has {num_labels} labels"
                        )
        except Exception as error:  # safetensors raises its own error types for corrupt files
            problems.append(f"{file.name} is not a readable safetensors file ({error})")


def validate_model_directory(directory) -> tuple[dict[str, Path], list[str]]:
    """Checks that `directory` is a complete MAEST model for the Hub.

    Returns:
        `(files, skipped)`: the files to upload (repo path -> local path, without the card) and the names of other
        files in the directory that are not uploaded.

    Raises:
        `ModelDirectoryError` listing every problem found.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ModelDirectoryError(f"{directory} is not a directory")
    problems: list[str] = []

    config = _read_json(directory / CONFIG_NAME, problems)
    if config is not None:
        model_type = config.get("model_type")
        if model_type == "audio-spectrogram-transformer":
            problems.append(
                f"{CONFIG_NAME} is an AST-format checkpoint; convert it first: maest convert {directory} OUTPUT_DIR"
            )
        elif model_type != "maest":
            problems.append(f"{CONFIG_NAME} has model_type {model_type!r}, expected 'maest'")
        auto_map = config.get("auto_map") or {}
        missing = {name: target for name, target in AUTO_MAP.items() if auto_map.get(name) != target}
        if missing:
            problems.append(
                f"{CONFIG_NAME} auto_map lacks {missing} (needed by trust_remote_code=True); re-save the model with "
                f"`import maest` and model.save_pretrained(...)"
            )

    feature_extractor = _read_json(directory / FEATURE_EXTRACTOR_NAME, problems)
    if feature_extractor is not None:
        if feature_extractor.get("feature_extractor_type") != "MAESTFeatureExtractor":
            problems.append(
                f"{FEATURE_EXTRACTOR_NAME} is not a MAESTFeatureExtractor "
                f"(feature_extractor_type {feature_extractor.get('feature_extractor_type')!r})"
            )
        elif (feature_extractor.get("auto_map") or {}).get("AutoFeatureExtractor") != AUTO_MAP["AutoFeatureExtractor"]:
            problems.append(f"{FEATURE_EXTRACTOR_NAME} auto_map lacks {FEATURE_EXTRACTOR_AUTO_MAP}")
        if config is not None and feature_extractor.get("max_length") != config.get("max_length"):
            problems.append(
                f"{FEATURE_EXTRACTOR_NAME} max_length {feature_extractor.get('max_length')} differs from the model's "
                f"{config.get('max_length')}"
            )

    for name in CODE_FILES:
        if not (directory / name).is_file():
            problems.append(f"{name} is missing (the code trust_remote_code=True loads; model.save_pretrained writes it)")

    weight_files = _weight_files(directory, problems)
    if config is not None and weight_files:
        _check_classifier_shape(weight_files, config, problems)

    if problems:
        raise ModelDirectoryError(f"{directory} cannot be pushed:\n- " + "\n- ".join(problems))

    files = {path.name: path for path in weight_files}
    for name in (CONFIG_NAME, FEATURE_EXTRACTOR_NAME, *CODE_FILES):
        files[name] = directory / name
    skipped = sorted(
        path.name
        for path in directory.iterdir()
        if path.name not in files and path.name != CARD_NAME and not path.name.startswith(".")
    )
    return files, skipped


def prepare_push(directory, repo_id: str | None = None, card_kwargs: dict | None = None) -> PushPlan:
    """Validates `directory` and reads (or, when it has none, generates) its model card, without changing anything
    on disk. `card_kwargs` go to `maest.model_cards.build_model_card` for a generated card."""
    directory = Path(directory)
    files, skipped = validate_model_directory(directory)
    card_path = directory / CARD_NAME
    if card_path.is_file():
        try:
            card = ModelCard.load(card_path)
        except Exception as error:  # invalid YAML or model-index
            raise ModelDirectoryError(f"{card_path}: the model card's metadata does not parse ({error})") from error
        return PushPlan(directory, files, str(card), card_generated=False, skipped=skipped)
    card = build_model_card(directory, repo_id=repo_id, **(card_kwargs or {}))
    return PushPlan(directory, files, str(card), card_generated=True, skipped=skipped)


def _connection_errors() -> tuple[type[BaseException], ...]:
    errors: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError)
    for module_name in ("httpx2", "httpx", "requests"):
        try:
            module = __import__(module_name)
        except ImportError:
            continue
        for name in ("TransportError", "ConnectionError", "Timeout"):
            error = getattr(module, name, None)
            if isinstance(error, type) and issubclass(error, BaseException):
                errors += (error,)
    return errors


def _hub_error(error: BaseException, repo_id: str, directory: Path) -> HubError:
    """A clear message for what went wrong talking to the Hub."""
    unchanged = f"Nothing was uploaded; {directory} is unchanged."
    if isinstance(error, OfflineModeIsEnabled):
        return HubError(f"cannot push to {repo_id}: offline mode is on (HF_HUB_OFFLINE=1). {unchanged}")
    if isinstance(error, LocalTokenNotFoundError):
        return HubError(
            f"cannot push to {repo_id}: not logged in. Run `hf auth login` or pass a token with write access "
            f"(--token, HF_TOKEN). {unchanged}"
        )
    if isinstance(error, HfHubHTTPError):
        status = getattr(getattr(error, "response", None), "status_code", None)
        if status in (401, 403):
            return HubError(
                f"not authorized to write {repo_id} (HTTP {status}): log in with `hf auth login` or pass a token with "
                f"write access to that namespace (--token, HF_TOKEN). {unchanged}"
            )
        if status == 404:
            return HubError(f"{repo_id} was not found, or this token cannot see it (HTTP 404). {unchanged}")
        return HubError(f"the Hub refused the push to {repo_id} (HTTP {status}): {error}. {unchanged}")
    return HubError(f"could not reach the Hugging Face Hub to push {repo_id} ({type(error).__name__}: {error}). {unchanged}")


def push_to_hub(
    directory,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    commit_description: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    card_kwargs: dict | None = None,
    api=None,
):
    """Uploads a saved MAEST directory to the Hub repo `repo_id` (created if needed) in one commit.

    Args:
        directory: a `save_pretrained` directory with the model, its feature extractor and code (`maest convert`,
            `maest pretrain`, `examples/finetune.py` and `model.save_pretrained` + `feature_extractor.save_pretrained`
            write one).
        repo_id (`str`): `"namespace/name"` (or `"name"` for your own namespace).
        private (`bool`, *optional*): create the repo private (ignored when it exists).
        token (`str`, *optional*): a Hub token with write access; the logged-in token by default.
        commit_message / commit_description (`str`, *optional*): the commit's message and description.
        revision (`str`, *optional*): branch to commit to. create_pr (`bool`): open a pull request instead.
        card_kwargs (`dict`, *optional*): arguments of `maest.model_cards.build_model_card` for the card generated
            when the directory has no `README.md` (which is uploaded as is otherwise).
        api (`huggingface_hub.HfApi`, *optional*): the client to use.

    Returns:
        The `huggingface_hub.CommitInfo` of the commit.

    Raises:
        `ModelDirectoryError` for an incomplete directory, `HubError` when offline, unauthorized or refused by the
        Hub. The directory is never modified.
    """
    directory = Path(directory)
    plan = prepare_push(directory, repo_id=repo_id, card_kwargs=card_kwargs)
    if constants.is_offline_mode():
        raise _hub_error(_offline_error(), repo_id, directory)

    operations = [
        CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path)) for name, path in sorted(plan.files.items())
    ]
    operations.append(CommitOperationAdd(path_in_repo=CARD_NAME, path_or_fileobj=plan.card.encode("utf-8")))
    api = api or HfApi()
    try:
        repo_url = api.create_repo(repo_id, private=private, token=token, exist_ok=True)
        return api.create_commit(
            getattr(repo_url, "repo_id", None) or repo_id,
            operations,
            commit_message=commit_message or f"Upload MAEST model ({len(operations)} files)",
            commit_description=commit_description,
            token=token,
            revision=revision,
            create_pr=create_pr,
        )
    except (HfHubHTTPError, LocalTokenNotFoundError, *_connection_errors()) as error:
        raise _hub_error(error, repo_id, directory) from error


def _offline_error():
    return OfflineModeIsEnabled("HF_HUB_OFFLINE is set")


def push_model_to_hub(
    model,
    repo_id: str,
    feature_extractor=None,
    *,
    card_kwargs: dict | None = None,
    max_shard_size: int | str | None = None,
    tags: list[str] | None = None,
    **push_kwargs,
):
    """Saves `model` (and its feature extractor: a default `MAESTFeatureExtractor` of the model's length when not
    given) to a temporary directory with its model card and pushes it with [`push_to_hub`] in one commit.

    Takes the arguments of transformers' `PreTrainedModel.push_to_hub` (`private`, `token`, `commit_message`,
    `commit_description`, `revision`, `create_pr`, `max_shard_size`, `tags`); unlike it, the commit also holds the
    feature extractor and the model card. `card_kwargs` go to `maest.model_cards.build_model_card`.
    """
    card_kwargs = dict(card_kwargs or {})
    if tags:
        card_kwargs["tags"] = [*card_kwargs.get("tags", []), *tags]
    with tempfile.TemporaryDirectory(prefix="maest-push-") as temporary:
        model.save_pretrained(temporary, **({"max_shard_size": max_shard_size} if max_shard_size else {}))
        feature_extractor = feature_extractor or MAESTFeatureExtractor(max_length=model.config.max_length)
        feature_extractor.save_pretrained(temporary)
        return push_to_hub(temporary, repo_id, card_kwargs=card_kwargs, **push_kwargs)


def convert_checkpoint(
    source,
    output_dir,
    *,
    labels: list[str] | None = None,
    preset: str | None = None,
    use_swa: bool = True,
    overwrite: bool = False,
    feature_extractor_kwargs: dict | None = None,
    card: bool = False,
    hub_name: str | None = None,
    published: str | None = None,
):
    """Converts an original checkpoint file (`*.ckpt`, `*.pt`), an AST-format MAEST repo or a MAEST directory into a
    MAEST directory with the model, its code and its feature extractor (see `maest.modeling.load_maest`). The
    directory is written next to its final place and moved there when complete, so a failed conversion leaves no
    half-written output. Returns the model.

    With `card=True` (implied by `hub_name` or `published`) the directory also gets its model card (`README.md`),
    ready for `maest push`: `published` names the released checkpoint it holds (`discogs-maest-30s-pw-129e` or
    `maest-30s`; found from the source's name when it is a released one), and `hub_name` is the Hub repo the card's
    examples load from (e.g. `my-org/maest-30s`).

    Raises:
        `OutputDirectoryError` for an output that exists (without `overwrite`), is the source, or cannot be written;
        `maest.modeling.CheckpointError` / `LabelError` for a source or label names that cannot be used.
    """
    output_dir = Path(output_dir)
    _check_output_directory(output_dir, Path(source), overwrite)
    model = load_maest(source, labels=labels, preset=preset, use_swa=use_swa)
    staging = _staging_directory(output_dir)
    try:
        model.save_pretrained(staging)
        extractor = MAESTFeatureExtractor(max_length=model.config.max_length, **(feature_extractor_kwargs or {}))
        extractor.save_pretrained(staging)
        if card or hub_name or published:
            _write_conversion_card(str(source), staging, model, hub_name=hub_name, published=published)
        _replace_directory(staging, output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return model


def _check_output_directory(output_dir: Path, source: Path, overwrite: bool) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputDirectoryError(f"{output_dir} exists and is not a directory")
    if output_dir.exists() and source.exists() and output_dir.resolve() == source.resolve():
        raise OutputDirectoryError(f"{output_dir} is the source; write the conversion to another directory")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise OutputDirectoryError(f"{output_dir} exists and is not empty; pass --overwrite to replace it")
    parent = output_dir.resolve().parent
    if not parent.is_dir():
        raise OutputDirectoryError(f"cannot write {output_dir}: the folder {parent} does not exist")


def _staging_directory(output_dir: Path) -> Path:
    parent = output_dir.resolve().parent
    try:
        return Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.partial-", dir=parent))
    except OSError as error:
        raise OutputDirectoryError(f"cannot write {output_dir}: {error.strerror or error} ({parent})") from error


def _replace_directory(staging: Path, output_dir: Path) -> None:
    """Moves the finished `staging` directory to `output_dir`, replacing what is there only once it is complete."""
    staging.chmod(0o755)  # mkdtemp creates it private; a model directory is as readable as any other
    if not output_dir.exists():
        staging.rename(output_dir)
        return
    previous = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.previous-", dir=output_dir.resolve().parent))
    output_dir.rename(previous / output_dir.name)
    staging.rename(output_dir)
    shutil.rmtree(previous, ignore_errors=True)


def _write_conversion_card(source: str, output_dir: Path, model, hub_name: str | None, published: str | None) -> Path:
    """The released checkpoint's card when the source is one (or `published` names one); otherwise a card for a
    converted model, naming the source."""
    if published is None:
        match = match_published(source)
        published = match.checkpoint if match is not None else None
    if published is not None:
        return write_model_card(output_dir, model.config, repo_id=hub_name, published=published)
    return write_model_card(
        output_dir,
        model.config,
        repo_id=hub_name,
        training_summary={"converted from": Path(source).name if Path(source).exists() else source},
    )
