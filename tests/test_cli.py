"""The `maest` command as a whole: start-up cost, Auto registration in every import order, exit statuses."""

import subprocess
import sys

import pytest

from maest.cli.common import EXIT_BROKEN_PIPE, EXIT_CRASH, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, run_command
from maest.utils.errors import MAESTError


def _python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    return result.stdout.strip()


def test_help_imports_neither_torch_nor_transformers():
    # What `maest --help` costs is the import of the parser: it must not pull in torch or transformers (seconds).
    loaded = _python(
        "import sys; from maest.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('torch', 'transformers', 'numpy', 'pyarrow') if m in sys.modules))"
    )
    assert loaded == "[]"


@pytest.mark.parametrize(
    "imports",
    [
        "import maest; import transformers",
        "import transformers; import maest",
        "from maest import MAESTConfig",
        "import maest.feature_extraction",
        "from maest.modeling.modeling_maest import MAESTModel",
    ],
)
def test_auto_classes_are_registered_in_any_import_order(imports):
    registered = _python(
        f"{imports}\n"
        "from transformers import AutoConfig, AutoModel, AutoFeatureExtractor\n"
        "from transformers.models.auto.modeling_auto import MODEL_MAPPING, MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING\n"
        "from transformers.models.auto.feature_extraction_auto import FEATURE_EXTRACTOR_MAPPING\n"
        "import maest\n"
        "config = AutoConfig.for_model('maest')\n"
        "print(type(config) is maest.MAESTConfig, MODEL_MAPPING[maest.MAESTConfig] is maest.MAESTModel,"
        " MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING[maest.MAESTConfig] is maest.MAESTForAudioClassification,"
        " FEATURE_EXTRACTOR_MAPPING[maest.MAESTConfig] is maest.MAESTFeatureExtractor)"
    )
    assert registered == "True True True True"


def _raises(exception):
    def command(args):
        raise exception

    return command


def test_exit_statuses(capsys):
    assert run_command(lambda args: None, None) == EXIT_OK
    assert run_command(_raises(MAESTError("bad value for --x: 3\n(must be positive)")), None) == EXIT_USAGE
    assert capsys.readouterr().err == "error: bad value for --x: 3 (must be positive)\n"
    assert run_command(_raises(FileNotFoundError(2, "No such file or directory", "missing.wav")), None) == EXIT_USAGE
    assert "missing.wav" in capsys.readouterr().err
    assert run_command(_raises(KeyboardInterrupt()), None) == EXIT_INTERRUPTED
    capsys.readouterr()
    # A bug is never exit 1 ("some tracks failed"), and its traceback is shown.
    assert run_command(_raises(ZeroDivisionError("division by zero")), None) == EXIT_CRASH
    assert "Traceback" in capsys.readouterr().err


def test_a_reader_that_goes_away_is_not_a_crash(small_model_dir, tmp_path):
    # `maest tag ... | head -1`: the reader closes the pipe before the table is printed.
    from conftest import synthetic_music, write_audio

    tracks = [write_audio(tmp_path / f"song{i}.wav", synthetic_music(6.0, seed=i)) for i in range(3)]
    process = subprocess.Popen(
        [sys.executable, "-m", "maest", "tag", *map(str, tracks), "--model", str(small_model_dir), "--num-workers", "0",
         "--format", "csv", "-q"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    process.stdout.close()
    err = process.stderr.read().decode()
    assert process.wait(timeout=300) == EXIT_BROKEN_PIPE, err
    assert "Traceback" not in err and "internal error" not in err
