"""Pool-labelling memory (not a test): peak RSS of ``label_pool`` on synthetic pools of short Chinese texts.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/pool_memory.py     # writes benchmarks/pool_memory.json

A tiny random-weight student (2-layer BERT, hidden 32, character vocabulary; the test suite's) is trained in fast mode
(head + kNN) on the test fixtures' sentiment sentences, so the model itself costs little and the figures show what
the labelling adds as the pool grows. Each pool size runs in a fresh subprocess, so ``ru_maxrss`` (read in the
child) is that size's own peak: once for ``label_pool`` (streamed shards) and, unless ``--no-in-memory``, once for the
in-memory path (``read_examples`` + ``predict`` on the whole file) for comparison. texts/s is wall clock over the
whole call (the validation pass and the shard writes included for ``label_pool``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Frequent characters of everyday Chinese product reviews and news (the pool draws from these, Zipf-weighted).
CHARACTERS = ("的一是不了在人有我他这个们中来上大为和国地到以说时要就出会可也你对生能而子那得于着下自之年过发后作里"
              "用道行所然家种事成方多经么去法学如都同现当没动面起看定天分还进好小部其些主样理心她本前开但因只从想实"
              "日军者意无力它与长把机十民第公此已工使情明性知全三又关点正业外将两高间由问很最重并物手应战向头文体政"
              "美相见被利什二等产或新己制身果加西斯月话合回特代内信表化老给世位次度门任常先海通教儿原东声提立及比员"
              "解水名真论处走义各入几口认条平系气题活尔更别打女变四神总何电数安少报才结反受目太量再感建务做接必场件"
              "计管期市直德资命山金指克许统区保至队形社便空决治展马科司五基眼书非则听白却界达光放强即像难且权思王象"
              "质量服务物流价格手机快递包装味道客服态度满意失望好评差评推荐购买退货坏便宜贵漂亮舒服喜欢")
SENTIMENT_WORDS = ["很好", "不错", "满意", "推荐", "太差", "失望", "坏了", "差评", "好评", "喜欢"]


# --------------------------------------------------------------------------------------------------------- parent
def make_pool(path: Path, count: int, seed: int = 0) -> int:
    """``count`` JSON lines of 6-40 characters (a sentiment word in most); returns the file size in bytes."""
    rng = random.Random(seed)
    weights = [1 / (rank + 1) for rank in range(len(CHARACTERS))]
    with path.open("w", encoding="utf-8") as handle:
        for _ in range(count):
            text = "".join(rng.choices(CHARACTERS, weights, k=rng.randint(6, 36)))
            if rng.random() < 0.8:
                text += rng.choice(SENTIMENT_WORDS)
            handle.write(json.dumps({"content": text}, ensure_ascii=False) + "\n")
    return path.stat().st_size


def train_tiny_model(folder: Path) -> Path:
    from gts_hf import GTSEngine, load_task
    from tests.conftest import NEGATIVE, POSITIVE, all_fixture_texts, build_tiny_student, write_jsonl

    student = build_tiny_student(folder / "student", all_fixture_texts() + [CHARACTERS])
    data = folder / "task"
    data.mkdir()
    write_jsonl(data / "train.json", [{"content": t, "label": "positive"} for t in POSITIVE[:5]] +
                [{"content": t, "label": "negative"} for t in NEGATIVE[:5]])
    write_jsonl(data / "dev.json", [{"content": t, "label": "positive"} for t in POSITIVE[5:]] +
                [{"content": t, "label": "negative"} for t in NEGATIVE[5:]])
    write_jsonl(data / "labels.json", [{"labels": ["negative", "positive"]}])
    GTSEngine(mode="fast", student=str(student), head_steps=20).train(load_task(data), folder / "model")
    return folder / "model"


def run_child(mode: str, model: Path, pool: Path, output_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", mode, "--model", str(model), "--pool",
               str(pool), "--output-dir", str(output_dir), "--shard-size", str(args.shard_size), "--batch-size",
               str(args.batch_size)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        raise RuntimeError(f"child {mode} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main_parent(args: argparse.Namespace) -> None:
    import torch

    sizes = [int(size) for size in args.sizes.split(",")]
    modes = ["label_pool"] + ([] if args.no_in_memory else ["in_memory"])
    rows = []
    with tempfile.TemporaryDirectory(prefix="gts-pool-memory-") as temporary:
        folder = Path(temporary)
        model = train_tiny_model(folder)
        for size in sizes:
            pool = folder / f"pool-{size}.jsonl"
            pool_bytes = make_pool(pool, size)
            for mode in modes:
                row = {"texts": size, "mode": mode, "pool_mb": round(pool_bytes / 2 ** 20, 2),
                       **run_child(mode, model, pool, folder / f"out-{size}-{mode}", args)}
                rows.append(row)
                print(f"  {mode:>10} {size:>7} texts: peak RSS {row['peak_rss_mb']:.1f} MiB "
                      f"(+{row['labelling_rss_mb']:.1f} over the loaded model), {row['texts_per_second']:.0f} texts/s",
                      flush=True)
            pool.unlink()
    report = {
        "command": " ".join(["OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/pool_memory.py", *sys.argv[1:]]),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
                    "cpus": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                    "load_average": os.getloadavg()},
        "model": "tiny random 2-layer BERT (hidden 32, character vocabulary), GTSEngine fast mode with kNN",
        "shard_size": args.shard_size, "batch_size": args.batch_size, "rows": rows,
    }
    output = Path(args.output)
    output.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print()
    print(table(rows))
    print(f"\nwrote {output}")


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| mode | texts | pool MiB | peak RSS MiB | RSS after model load MiB | labelling adds MiB | seconds | "
             "texts/s | shards |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['mode']} | {row['texts']} | {row['pool_mb']} | {row['peak_rss_mb']:.1f} | "
                     f"{row['loaded_rss_mb']:.1f} | {row['labelling_rss_mb']:.1f} | {row['seconds']:.1f} | "
                     f"{row['texts_per_second']:.0f} | {row.get('shards', '-')} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------- child
def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main_child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(1)
    from gts_hf.engine import load_trained

    model, tokenizer = load_trained(args.model)
    loaded = max_rss_mb()
    started = time.perf_counter()
    row: dict[str, Any] = {}
    if args.child == "label_pool":
        from gts_hf.pool import label_pool

        result = label_pool(model, tokenizer, args.pool, args.output_dir, shard_size=args.shard_size,
                            batch_size=args.batch_size, show_progress=False)
        count = result.num_texts
        row["shards"] = result.num_shards
        row["output_mb"] = round(sum(p.stat().st_size for p in Path(args.output_dir).iterdir()) / 2 ** 20, 2)
    else:
        from gts_hf.data import read_examples
        from gts_hf.inference import predict

        examples = read_examples(args.pool, require_label=False)
        count = len(predict(model, tokenizer, examples, batch_size=args.batch_size).probabilities)
    seconds = time.perf_counter() - started
    peak = max_rss_mb()
    row.update(peak_rss_mb=round(peak, 1), loaded_rss_mb=round(loaded, 1), labelling_rss_mb=round(peak - loaded, 1),
               seconds=round(seconds, 2), texts_per_second=round(count / seconds, 1), labelled=count)
    print(json.dumps(row))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000", help="pool sizes, comma-separated")
    parser.add_argument("--shard-size", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--no-in-memory", action="store_true", help="skip the read_examples + predict comparison")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "pool_memory.json"))
    parser.add_argument("--child", choices=("label_pool", "in_memory"), help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--pool", help=argparse.SUPPRESS)
    parser.add_argument("--output-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        main_child(args)
    else:
        main_parent(args)


if __name__ == "__main__":
    main()
