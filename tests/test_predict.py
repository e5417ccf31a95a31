"""python -m tfpretrain.predict on an export, with nothing but the export."""

import json

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import CPP_LOG_LINE, run_python
from tfpretrain import predict


@pytest.fixture(scope="module")
def export_dir(toy_bert, tmp_path_factory):
    from tfpretrain.encoders.bert import load_bert_encoder
    from tfpretrain.export import export_text_classifier
    from tfpretrain.models import build_bert_classifier

    loaded = load_bert_encoder(*toy_bert)
    path = str(tmp_path_factory.mktemp("predict") / "export")
    return export_text_classifier(build_bert_classifier(loaded.layer, 3, seed=1),
                                  ["neg", "pos", "meh"], path, loaded.preprocessor, 16)


def test_table_json_and_file_inputs(export_dir, tmp_path, capsys):
    texts = ["good film", "bad plot", "Café 東京"]
    serve = tf.saved_model.load(export_dir).signatures["serving_default"]
    expected = serve(text=tf.constant(texts))
    table = run_python(["-m", "tfpretrain.predict", "--model", export_dir, *texts], timeout=120)
    assert table.returncode == 0, table.stderr[-2000:]
    assert not CPP_LOG_LINE.search(table.stderr), table.stderr[:2000]
    lines = table.stdout.strip().splitlines()
    assert lines[0].split() == ["input", "label", "probability"] and len(lines) == 4
    for line, label, p in zip(lines[1:], expected["label"].numpy(),
                              expected["probabilities"].numpy()):
        assert line.split()[-2:] == [label.decode(), f"{p.max():.4f}"]
    # The rest in-process: the command's start-up is checked above.
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    assert predict.main(["--model", export_dir, "--file", str(tmp_path / "texts.txt"), "--json",
                         "--batch_size", "2"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r["input"] for r in records] == texts
    assert all(sorted(r["probabilities"]) == ["meh", "neg", "pos"] for r in records)
    got = np.array([[r["probabilities"][k] for k in ("neg", "pos", "meh")] for r in records])
    np.testing.assert_allclose(got, expected["probabilities"].numpy(), atol=1e-6)


def test_bad_model_dir_is_one_line(tmp_path, capsys):
    assert predict.main(["--model", str(tmp_path), "text"]) == 2
    stderr = capsys.readouterr().err
    assert "error: --model" in stderr and "no SavedModel" in stderr and "Traceback" not in stderr


def test_file_inputs_keep_one_output_per_line_blank_lines_included(export_dir, tmp_path,
                                                                  capsys):
    lines = ["good film", "", "bad plot", "   ", "Café"]
    (tmp_path / "texts.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert predict.main(["--model", export_dir, "--file", str(tmp_path / "texts.txt"),
                         "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r["input"] for r in records] == lines

