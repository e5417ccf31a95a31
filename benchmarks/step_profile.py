"""Where a fine-tuning step's time goes: TensorFlow op time by op type and by model part.

Runs the tfpretrain side of finetune_speed.py (same checkpoint, data and settings; default 640
examples = 20 steps) under TensorFlow's profiler, reads the trace it writes (the XPlane protocol
buffers, parsed with the protobuf classes TensorFlow ships), and prints:

- the op types with the most self time (time inside an op, minus the ops nested in it), in
  milliseconds per step and as a share of all op time;
- the same time grouped: matrix products (MatMul, Einsum, BatchMatMul in any variant), and by
  name scope the GELU, dropout, layer norm, softmax, optimizer update and gradient clipping, and
  the backward pass (everything under the gradient tape) — groups by scope overlap the matrix
  products and each other, so their shares do not add up to 100%.

    python benchmarks/step_profile.py --long-texts                  # every example 128 tokens
    python benchmarks/step_profile.py --long-texts --implementation keras --precision mixed_bfloat16

Every option not listed under "profile" goes to finetune_speed.py (see its --help).
"""

import argparse
import collections
import glob
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # noqa: E402

from benchmarks import common, finetune_speed  # noqa: E402

MATMUL_TYPES = ("MatMul", "Einsum")  # also BatchMatMulV2, _MklMatMul, _FusedMatMul, ...
# Model parts by name scope, in the order they print; a scope matches case-insensitively.
SCOPES = {
    "GELU": ("gelu",),
    "dropout": ("dropout",),
    "layer norm": ("layer_norm", "layernorm", "layer_normalization"),
    "softmax": ("softmax",),
    "optimizer update and gradient clipping": ("adam", "optimizer", "global_norm",
                                               "clip_by"),
    "backward pass": ("gradient_tape/", "gradients/"),
}


def _self_times(line):
    """``[(metadata id, self picoseconds)]`` of one thread's events: each event's duration minus
    the durations of the events directly nested in it (events on one thread nest or follow)."""
    events = sorted(line.events, key=lambda e: (e.offset_ps, -e.duration_ps))
    result, stack = [], []  # stack: [index into result, end]
    for event in events:
        end = event.offset_ps + event.duration_ps
        while stack and stack[-1][1] <= event.offset_ps:
            stack.pop()
        if stack:
            parent = result[stack[-1][0]]
            result[stack[-1][0]] = (parent[0], parent[1] - event.duration_ps)
        result.append((event.metadata_id, event.duration_ps))
        stack.append([len(result) - 1, end])
    return result


def op_times(logdir):
    """``{(op name, op type): seconds}`` summed over every trace under ``logdir``. An event is a
    TensorFlow op when its metadata name is ``"<op name>:<op type>"`` with the type as its display
    name (how TensorFlow's host tracer names op kernels)."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    paths = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
    if not paths:
        raise FileNotFoundError(f"no *.xplane.pb trace under {logdir}")
    times = collections.Counter()
    for path in paths:
        space = xplane_pb2.XSpace()
        with open(path, "rb") as f:
            space.ParseFromString(f.read())
        for plane in space.planes:
            meta = plane.event_metadata
            for line in plane.lines:
                for metadata_id, picoseconds in _self_times(line):
                    m = meta[metadata_id]
                    if m.display_name and m.name.endswith(":" + m.display_name):
                        name = m.name[:-len(m.display_name) - 1]
                        times[(name, m.display_name)] += picoseconds * 1e-12
    return dict(times)


def summarize(times, steps):
    """``(types, groups, total)``: ``types`` = ``[(op type, ms per step, share)]`` by time, most
    first; ``groups`` = ``[(group, ms per step, share)]`` (matrix products, then ``SCOPES``);
    ``total`` = seconds of op time in all."""
    total = sum(times.values())
    if not total:
        raise ValueError("the trace holds no TensorFlow op time")
    by_type = collections.Counter()
    for (_, kind), seconds in times.items():
        by_type[kind] += seconds

    def row(label, seconds):
        return (label, 1e3 * seconds / steps, seconds / total)

    types = [row(kind, seconds) for kind, seconds in by_type.most_common()]
    matmul = sum(s for kind, s in by_type.items() if any(t in kind for t in MATMUL_TYPES))
    groups = [row("matrix products", matmul)]
    for label, needles in SCOPES.items():
        groups.append(row(label, sum(s for (name, _), s in times.items()
                                     if any(n in name.lower() for n in needles))))
    return types, groups, total


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    profile = parser.add_argument_group("profile")
    profile.add_argument("--top", type=int, default=20,
                         help="op types to list (default: %(default)s)")
    profile.add_argument("--logdir", default=None,
                         help="keep the trace here, for TensorBoard's profile tab "
                              "(default: a temporary folder)")
    args, rest = parser.parse_known_args(argv)
    bench = finetune_speed.parse_args(["--examples", "640", *rest, "--sides", "tfpretrain"])
    texts, labels = finetune_speed.load_texts(bench)

    import tensorflow as tf

    with tempfile.TemporaryDirectory() as scratch:
        logdir = args.logdir or scratch
        tf.profiler.experimental.start(logdir)
        try:
            result = finetune_speed.run_tfpretrain(texts, labels, bench)
        finally:
            tf.profiler.experimental.stop()
        common.log(f"reading the trace in {logdir} ...")
        times = op_times(logdir)
    steps = result["steps"]
    types, groups, total = summarize(times, steps)
    print()
    print(f"{steps} steps of {bench.batch_size} "
          + ("long examples" if bench.long_texts else "SST-2 sentences")
          + f", {bench.seq_length} tokens at most, {bench.implementation} encoder, "
          f"{bench.precision}: {1e3 * total / steps:.0f} ms of op time per step "
          f"({result['wall_seconds']:.1f} s wall, tracing and the first step included)")
    print(common.markdown_table(["op type", "ms/step", "share"],
                                [[k, f"{ms:.1f}", f"{100 * s:.1f}%"]
                                 for k, ms, s in types[:args.top]]))
    print()
    print(common.markdown_table(["part", "ms/step", "share"],
                                [[k, f"{ms:.1f}", f"{100 * s:.1f}%"] for k, ms, s in groups]))


if __name__ == "__main__":
    main()
