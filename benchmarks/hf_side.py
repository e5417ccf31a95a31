"""The Hugging Face side of the benchmarks; runs only in benchmarks/.hf-venv (torch, transformers).

    python hf_side.py {peak,finetune,serve} request.json result.json

Started by benchmarks/common.py:run_hf_side; never imports tensorflow or tfpretrain.
"""

import dataclasses
import json
import os
import sys
import tempfile
import time

# Python puts this script's folder first on sys.path, where benchmarks/datasets.py would shadow
# the Hugging Face `datasets` package that transformers' Trainer imports.
sys.path = [p for p in sys.path
            if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402


def log(message):
    print(f"[hf] {message}", flush=True)


def versions():
    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "torch_threads": torch.get_num_threads(),
            "torch_interop_threads": torch.get_num_interop_threads()}


def matmul_peak(n=3072, repeats=4):
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best


def peak(request):
    return {"torch_matmul_flops": matmul_peak(), **versions()}


def finetune(request):
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    torch.manual_seed(request["seed"])
    model_dir, batch_size, seq_length = (request["model_dir"], request["batch_size"],
                                         request["seq_length"])
    # Before the clock: model and tokenizer loading, training arguments.
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    options = dict(per_device_train_batch_size=batch_size,
                   num_train_epochs=request.get("epochs", 1),
                   learning_rate=request["learning_rate"], weight_decay=request["weight_decay"],
                   max_grad_norm=request["clip_norm"], lr_scheduler_type="linear",
                   save_strategy="no", report_to=[], disable_tqdm=True,
                   # the loss every log_every steps, for long runs; none in timed runs
                   logging_strategy="steps" if request.get("log_every") else "no",
                   logging_steps=request.get("log_every") or 500,
                   use_cpu=True, seed=request["seed"], bf16=False, fp16=False)
    if "warmup_ratio" in fields:
        options["warmup_ratio"] = request["warmup_fraction"]
    else:
        # transformers 5: a float in [0, 1) is a ratio
        options["warmup_steps"] = request["warmup_fraction"]
    if "eval_strategy" in fields:
        options["eval_strategy"] = "no"
    if request["group_by_length"]:
        if "train_sampling_strategy" in fields:  # transformers >= 5.x
            options["train_sampling_strategy"] = "group_by_length"
        else:
            options["group_by_length"] = True
    collator = DataCollatorWithPadding(tokenizer)
    stats = []

    def collate(features):  # DataCollatorWithPadding, recording what each trained batch computes
        batch = collator(features)
        lengths = batch["attention_mask"].sum(dim=1).to(torch.int64)
        stats.append([int(batch["attention_mask"].shape[0]), int(batch["attention_mask"].shape[1]),
                      int(lengths.sum()), int((lengths ** 2).sum())])
        return batch

    texts, labels = request["texts"], request["labels"]
    with tempfile.TemporaryDirectory() as outdir:
        args = TrainingArguments(output_dir=outdir, **options)
        log(f"training {len(texts)} examples, batch {batch_size}, "
            f"sampler {'group_by_length' if request['group_by_length'] else 'random'} ...")
        start = time.perf_counter()
        encoded = tokenizer(texts, truncation=True, max_length=seq_length)
        dataset = [{**{k: v[i] for k, v in encoded.items()}, "labels": labels[i]}
                   for i in range(len(texts))]
        tokenized = time.perf_counter()
        trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collate,
                          processing_class=tokenizer)
        output = trainer.train()
        wall = time.perf_counter() - start
        log(f"done in {wall:.1f} s ({len(texts) * options['num_train_epochs'] / wall:.1f} "
            f"examples/s)")
        predictions = predict(model, tokenizer, request.get("eval_texts", []), seq_length)
    return {"wall_seconds": wall, "predictions": predictions, "tokenize_seconds": tokenized - start,
            "steps": output.global_step, "train_loss": output.training_loss, "batch_stats": stats,
            "options": {k: v for k, v in options.items() if k != "report_to"}, **versions()}


def predict(model, tokenizer, texts, seq_length, batch_size=64):
    """The trained model's class for each of ``texts`` (its argmax), in order. (Not
    ``Trainer.predict``: under ``group_by_length`` transformers 5 also reorders evaluation.)"""
    if not texts:
        return []
    log(f"predicting {len(texts)} examples ...")
    model.eval()
    classes = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], truncation=True,
                              max_length=seq_length, padding=True, return_tensors="pt")
            classes += model(**batch).logits.argmax(dim=-1).tolist()
    return classes


def serve(request):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    model_dir = request["model_dir"]
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    classify = pipeline("text-classification", model=model, tokenizer=tokenizer, device="cpu")
    kwargs = {"truncation": True, "max_length": request["seq_length"]}
    single, texts = request["single"], request["texts"]
    for text in single[:request["warmup"]]:
        classify(text, **kwargs)
    latencies = []
    for text in single:
        start = time.perf_counter()
        classify(text, **kwargs)
        latencies.append(time.perf_counter() - start)
    classify(texts[:request["batch_size"]], batch_size=request["batch_size"], **kwargs)  # warm-up
    start = time.perf_counter()
    out = classify(texts, batch_size=request["batch_size"], **kwargs)
    seconds = time.perf_counter() - start
    assert len(out) == len(texts)
    latencies = np.asarray(latencies) * 1000
    return {"p50_ms": float(np.percentile(latencies, 50)),
            "p99_ms": float(np.percentile(latencies, 99)),
            "batch_seconds": seconds, "batch_examples_per_s": len(texts) / seconds, **versions()}


if __name__ == "__main__":
    mode, request_file, result_file = sys.argv[1:4]
    with open(request_file, encoding="utf-8") as f:
        request = json.load(f)
    result = {"peak": peak, "finetune": finetune, "serve": serve}[mode](request)
    with open(result_file, "w", encoding="utf-8") as f:
        json.dump(result, f)
