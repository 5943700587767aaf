"""ONNX export: onnxruntime on CPU reproduces the PyTorch outputs for any batch size and frame count."""

import numpy as np
import pytest
import torch

from maest import MAESTForAudioClassification
from maest.cli import main as maest_main


onnxruntime = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported(small_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "maest.onnx"
    status = maest_main(["export-onnx", str(small_model_dir), str(out), "--block", "1", "--tokens", "cls,mean"])
    assert status == 0
    return out


@pytest.mark.parametrize("batch_size, num_frames", [(1, 316), (3, 200), (2, 16), (5, 57)])
def test_onnxruntime_matches_pytorch(exported, small_model_dir, batch_size, num_frames):
    session = onnxruntime.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    assert [node.name for node in session.get_inputs()] == ["input_values"]
    assert [node.name for node in session.get_outputs()] == ["logits", "embedding"]
    model = MAESTForAudioClassification.from_pretrained(small_model_dir).eval()
    input_values = torch.randn(batch_size, num_frames, 96, generator=torch.Generator().manual_seed(num_frames))
    logits, embedding = session.run(None, {"input_values": input_values.numpy()})
    with torch.no_grad():
        expected_logits = model(input_values).logits.numpy()
        expected_embedding = model.maest.embed(input_values, block=1, tokens=("cls", "mean")).numpy()
    assert logits.shape == (batch_size, 7) and embedding.shape == (batch_size, 128)
    np.testing.assert_allclose(logits, expected_logits, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(embedding, expected_embedding, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_export_keeps_inference_patchout(small_model_dir, tmp_path):
    out = tmp_path / "stride2.onnx"
    assert maest_main(["export-onnx", str(small_model_dir), str(out), "--inference-patchout-time-stride", "2"]) == 0
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    model = MAESTForAudioClassification.from_pretrained(small_model_dir, inference_patchout_time_stride=2).eval()
    input_values = torch.randn(2, 250, 96, generator=torch.Generator().manual_seed(0))
    logits, _ = session.run(None, {"input_values": input_values.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(logits, model(input_values).logits.numpy(), atol=1e-4, rtol=1e-4)


def test_export_refuses_to_replace_a_file_unless_asked(exported, small_model_dir, tmp_path, capsys):
    kept = tmp_path / "notes.onnx"
    kept.write_text("the user's file")
    assert maest_main(["export-onnx", str(small_model_dir), str(kept)]) == 2
    assert kept.read_text() == "the user's file"
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    blocker = tmp_path / "plain-file"
    blocker.write_text("x")
    assert maest_main(["export-onnx", str(small_model_dir), str(blocker / "m.onnx")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err.strip().splitlines()[-1]
    again = tmp_path / "again.onnx"
    again.write_bytes(exported.read_bytes())
    assert maest_main(["export-onnx", str(small_model_dir), str(again), "--block", "1", "--tokens", "cls,mean", "--overwrite"]) == 0
    session = onnxruntime.InferenceSession(str(again), providers=["CPUExecutionProvider"])
    assert [node.name for node in session.get_outputs()] == ["logits", "embedding"]
