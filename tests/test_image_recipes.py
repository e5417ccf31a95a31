"""End to end on digits with tiny settings: pretrain → install preset → transfer + baselines →
export → predict."""

import base64
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import run_python

TINY_PRETRAIN = ["--model.filters=64", "--model.blocks=1", "--model.image_size=16",
                 "--train.epochs=2"]


@pytest.fixture(scope="module")
def transfer_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    pre = run_python(["-m", "recipes.resnet_pretrain", f"--workdir={root / 'pre'}", *TINY_PRETRAIN])
    assert pre.returncode == 0, pre.stderr[-3000:]
    assert "installed the encoder as zoo preset digits_resnet" in pre.stdout
    run = run_python(["-m", "recipes.resnet_image_classifier", f"--workdir={root / 'run'}",
                      "--model.encoder=digits_resnet", "--train.head_epochs=2", "--train.epochs=2"])
    assert run.returncode == 0, run.stderr[-3000:]
    return root, pre, run


# The fixture's two recipe runs take about 50 s: its three tests are in the slow suite (.ci/run
# runs it); tests/test_images.py and tests/test_image_encoders.py cover the pieces by default.
@pytest.mark.slow
def test_pretrain_exports_an_image_feature_vector(transfer_run):
    root, pre, _ = transfer_run
    assert "steps/epoch 13 | total steps 26" in pre.stdout  # 811 digits 0-4 in batches of 64
    served = tf.saved_model.load(str(root / "pre" / "export"))
    assert served(tf.zeros([2, 16, 16, 3])).shape == (2, 64)
    # stem (conv1 kernel), 1 pre-activation block (2 kernels, 2 batch norms), top (post_bn)
    assert [int(n) for n in served.block_sizes.numpy()] == [1, 10, 4]
    architecture = json.loads((root / "pre" / "export" / "architecture.json").read_text())
    assert architecture["filters"] == [64]
    assert (root / "pre" / "report.md").exists()


@pytest.mark.slow
def test_transfer_with_baselines_and_both_export_signatures(transfer_run):
    root, _, run = transfer_run
    out = run.stdout
    assert ("digits_target: train 100 (20 per class), validation 249, test 247 images, 5 classes"
            in out)
    metrics = json.loads((root / "run" / "metrics.json").read_text())
    comparison = metrics["comparison"]
    assert set(comparison) == {"transfer", "frozen", "scratch"}
    # Same budget: (2 + 2) epochs x 4 steps.
    assert {r["steps"] for r in comparison.values()} == {16}
    assert metrics["label_names"] == ["5", "6", "7", "8", "9"]
    assert "Transfer vs baselines (same number of steps)" in out
    line = [row for row in out.splitlines() if row.startswith("export check")][0]
    # PNG and JPEG bytes, fresh process.
    assert float(line.split("max abs diff ")[1].split()[0]) <= 1e-5
    served = tf.saved_model.load(str(root / "run" / "export")).signatures
    assert set(served) == {"serving_default", "serving_float", "predict_embeddings"}
    # Any size: resized inside.
    image = np.random.default_rng(0).random((20, 12, 3)).astype("float32")
    by_float = served["serving_float"](images=tf.constant(image[None]))["probabilities"].numpy()
    png = tf.io.encode_png(tf.image.convert_image_dtype(image, tf.uint8)).numpy()
    by_png = served["serving_default"](image_bytes=tf.constant([png]))["probabilities"].numpy()
    assert by_float.shape == by_png.shape == (1, 5)
    np.testing.assert_allclose(by_float, by_png, atol=0.05)  # the PNG holds 8-bit pixels
    request = json.loads((root / "run" / "request.json").read_text())
    assert base64.b64decode(request["instances"][0]["b64"])[:4] in (
        b"\x89PNG", b"\xff\xd8\xff\xe0", b"\xff\xd8\xff\xdb")
    report = (root / "run" / "report.md").read_text()
    assert "`serving_float`" in report and "image_bytes" in report


@pytest.mark.slow
def test_predict_cli_classifies_image_files(transfer_run, tmp_path):
    root, _, _ = transfer_run
    digit = tf.constant(np.full((8, 8, 1), 200, np.uint8))
    (tmp_path / "a.png").write_bytes(tf.io.encode_png(digit).numpy())
    (tmp_path / "b.jpg").write_bytes(tf.io.encode_jpeg(digit).numpy())
    result = run_python(["-m", "tfpretrain.predict", "--model", str(root / "run" / "export"),
                         str(tmp_path / "a.png"), str(tmp_path / "b.jpg"), "--json"])
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [os.path.basename(r["input"]) for r in rows] == ["a.png", "b.jpg"]
    assert all(r["label"] in {"5", "6", "7", "8", "9"}
               and set(r["probabilities"]) == {"5", "6", "7", "8", "9"}
               for r in rows)
    missing = run_python(["-m", "tfpretrain.predict", "--model", str(root / "run" / "export"),
                          "nope.png"])
    assert missing.returncode == 2 and "not a file: nope.png" in missing.stderr


# The classifier's command line with digits_resnet's zoo entry given tiny recipe flags: the
# default pretraining would take about 9 minutes of the CI budget.
FIRST_USE = """import runpy, sys
from tfpretrain import zoo
zoo.PRESETS["digits_resnet"]["recipe_flags"] = {"model.filters": "64", "model.blocks": "1",
                                                "model.image_size": 16, "train.epochs": 1,
                                                "train.max_steps": 3}
sys.argv = ["resnet_image_classifier", *sys.argv[1:]]
runpy.run_module("recipes.resnet_image_classifier", run_name="__main__")
"""


@pytest.mark.slow
def test_classifier_builds_its_encoder_on_first_use(tmp_path):
    cache = tmp_path / "cache"
    run = run_python(["-c", FIRST_USE, f"--workdir={tmp_path / 'run'}",
                      "--model.encoder=digits_resnet", "--train.head_epochs=1", "--train.epochs=1",
                      "--model.baselines=false"],
                     env={"TFPRETRAIN_CACHE": str(cache)}, timeout=1200)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "preset digits_resnet is not in the cache: building it first" in run.stdout
    assert "--model.image_size=16" in run.stdout  # the build took the zoo entry's flags
    assert json.loads((cache / "presets" / "digits_resnet" / "preset.json").read_text())[
        "pretrained_on"] == "digits_source"
    assert (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.slow
def test_image_label_curves_end_to_end(transfer_run, tmp_path):
    """benchmarks.label_curves --task image: fine-tuned, frozen and from-scratch curves on digits
    5-9 from the tiny pretrained ResNet's export (its architecture.json makes the scratch one)."""
    encoder = transfer_run[0] / "pre" / "export"
    workdir = tmp_path / "curves"
    command = ["-m", "benchmarks.label_curves", "--task=image",
               f"--workdir={workdir}", "--labels=1,2", "--seeds=1", "--min-steps=4",
               "--min-epochs=1", "--head-fraction=0.5", f"--curve=tuned={encoder}",
               f"--curve=frozen={encoder}:frozen",
               f"--curve=scratch={encoder}:scratch"]
    result = run_python(command)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(workdir / "runs.jsonl") as f:
        runs = [json.loads(line) for line in f]
    assert {(r["curve"], r["per_class"], r["examples"]) for r in runs} == {
        (c, k, 5 * k) for c in ("tuned", "frozen", "scratch") for k in (1, 2)}
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["steps"] == 4 for r in runs)
    # Only the fine-tuned curve spends half its steps on the head alone.
    assert {(r["curve"], r["head_fraction"]) for r in runs} == {
        ("tuned", 0.5), ("frozen", 0.0), ("scratch", 0.0)}
    assert "| labels per class | tuned" in result.stdout


def test_recipe_presets_flags_are_config_fields():
    from recipes.image_configs import ResnetPretrainConfig
    from tfpretrain import zoo

    flagged = {n: p["recipe_flags"] for n, p in zoo.PRESETS.items() if "recipe_flags" in p}
    assert "glyphs_resnet" in flagged
    cfg = ResnetPretrainConfig()
    for flags in flagged.values():
        for key, value in flags.items():
            section, field = key.split(".")
            assert type(getattr(getattr(cfg, section), field)) is type(value), key


@pytest.mark.slow
def test_a_flagged_preset_is_built_with_its_flags(tmp_path, monkeypatch, capsys):
    """ensure_preset runs resnet_pretrain with the preset's recipe_flags (here: glyphs, tiny)."""
    from recipes import resnet_pretrain
    from tfpretrain import zoo

    monkeypatch.setenv("TFPRETRAIN_CACHE", str(tmp_path / "cache"))
    flags = {"data.name": "glyphs/no_5_to_9", "model.filters": "64", "model.blocks": "1",
             "model.image_size": 16, "train.epochs": 1, "train.max_steps": 3}
    monkeypatch.setitem(zoo.PRESETS, "tiny_glyphs", {"contract": "image",
                                                     "recipe": "resnet_pretrain",
                                                     "recipe_flags": flags})
    resnet_pretrain.ensure_preset("tiny_glyphs")
    out = capsys.readouterr().out
    assert ("building it first with python -m recipes.resnet_pretrain "
            "--data.name=glyphs/no_5_to_9" in out)
    assert "42 classes" in out
    info = zoo.read_preset("tiny_glyphs")
    assert info["pretrained_on"] == "glyphs/no_5_to_9" and info["filters"] == [64]
