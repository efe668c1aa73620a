"""What one training step of this project is made of, on a GPU (or, for trying it out, the CPU).

    python benchmarks/gpu_profile.py --device cuda --encoder-dir DIR --config 16:bf16-mixed --config 256:bf16-mixed

Trains the benchmark's setup (benchmarks/vs_sentence_transformers.py: the demo experiment's pipeline
on the shared HebNLI sample's train part, cycled, lr 5e-5, max_seq_length 256) with the per-step
callbacks of `python -m src.train` that touch the step (StepSeed, TrainingLogs), no logger, no
checkpoints, no progress bar. Each `--config BATCH:PRECISION[:compile]` runs, in this process:

- `--warmup` steps, untimed (CUDA context, cuBLAS handles, allocator, `torch.compile`);
- `--steps` timed steps, without the profiler: the step time, pairs/s, model
  TFLOP/s and MFU (as the benchmark counts them), and the host time of each phase of a step
  (mean and median, ms): forward (training_step: encoder, loss, its finiteness check, logging, zero_grad),
  backward, optimizer (gradient clipping, AdamW, LR scheduler, the end-of-batch hooks), and between
  steps (fetching and collating the next batch, copying it to the GPU, the loop's own work);
- 1 + `--profile-steps` steps under torch.profiler (the first one discarded as warm-up): the top
  ops by self CUDA and self CPU time, and from the trace: how busy the GPU was (the union of kernel,
  memcpy and memset intervals over the steps' wall time, and kernel time per step against the
  unprofiled step time), kernels per step, host syncs per step (`.item()` and the like, and
  cudaStreamSynchronize / cudaDeviceSynchronize calls), and each phase's GPU time (kernels
  attributed to the phase whose host range launched them).

Writes `<name>.json`, `<name>.md` and one `<name>_<config>.trace.json.gz` per config into `--out-dir`,
again after every config, so an interrupted run keeps the configs it finished.
"""
import argparse
import gzip
import json
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import vs_sentence_transformers as bench  # noqa: E402

PHASES = ("between", "forward", "backward", "optimizer")
# the op that copies a GPU scalar to the host and so waits for the GPU (`.item()`, `float(t)`, `if t:`),
# and the calls that usually lead to it
HOST_SYNC_OP = "aten::_local_scalar_dense"
SYNC_CALLERS = ("aten::item", "aten::is_nonzero")
SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")
DEVICE_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")


class StepPhases:
    """A Lightning callback: host timestamps at the phase boundaries of every training step, and
    while profiling, a `phase:<name>` record_function range around each phase (for the trace)."""

    def __init__(self) -> None:
        import lightning as L

        class _Callback(L.Callback):
            pass

        self.callback = _Callback()
        for hook, boundary in (("on_train_batch_start", "forward"), ("on_before_backward", "backward"),
                               ("on_after_backward", "optimizer"), ("on_train_batch_end", "between")):
            setattr(self.callback, hook, self._boundary(boundary))
        self.marks: list[tuple[int, str, float]] = []  # (step, phase starting, time)
        # per step: non-padding tokens, their squares (attention), and the tokens of one padded pass;
        # kept as tensors, so counting never waits for the GPU
        self.tokens: list[tuple[torch.Tensor, torch.Tensor, int]] = []
        self.on_step_end = None  # called after each step's end mark (the profiler's step)
        self.annotate = False
        self._range = None
        self.step = -1

    def _boundary(self, phase: str):
        def hook(trainer, pl_module, *args, **kwargs) -> None:
            if phase == "forward":
                self.step += 1
                batch = args[0]
                masks = [batch[k] for k in batch if k.startswith("attention_mask_")]
                lengths = torch.cat([m.sum(dim=1) for m in masks])
                one_pass = len(lengths) * max(m.shape[1] for m in masks)
                self.tokens.append((lengths.sum(), (lengths**2).sum(), one_pass))
            self.marks.append((self.step, phase, time.perf_counter()))
            if self._range is not None:
                self._range.__exit__(None, None, None)
                self._range = None
            if phase == "between" and self.on_step_end is not None:
                self.on_step_end(self.step)
            if self.annotate:
                self._range = torch.profiler.record_function(f"phase:{phase}")
                self._range.__enter__()

        return hook

    def close(self) -> None:
        if self._range is not None:
            self._range.__exit__(None, None, None)
            self._range = None

    def host_phases(self, first: int, last: int) -> dict[str, Any]:
        """Per step in [first, last): each phase's host time and the whole step's, in ms."""
        starts: dict[int, dict[str, float]] = {}
        for step, phase, t in self.marks:
            starts.setdefault(step, {})[phase] = t
        rows = []
        for step in range(first, last):
            this, after = starts.get(step, {}), starts.get(step + 1, {})
            if not {"forward", "backward", "optimizer", "between"} <= this.keys() or "forward" not in after:
                continue
            rows.append({
                "forward": this["backward"] - this["forward"],
                "backward": this["optimizer"] - this["backward"],
                "optimizer": this["between"] - this["optimizer"],
                "between": after["forward"] - this["between"],
                "step": after["forward"] - this["forward"],
            })
        if not rows:
            return {}
        return {
            "steps": len(rows),
            "median_ms": {k: 1e3 * statistics.median(r[k] for r in rows) for k in rows[0]},
            "mean_ms": {k: 1e3 * statistics.fmean(r[k] for r in rows) for k in rows[0]},
        }


def callers(events: list[dict], targets: set[str], depth: int = 4) -> dict[str, int]:
    """How often each event named in `targets` ran, by its innermost `depth` enclosing host ranges
    (`aten::item < phase:optimizer < ...`): where the syncs come from."""
    counts: dict[str, int] = {}
    by_thread: dict[Any, list[dict]] = {}
    for e in events:
        if e.get("cat") in ("cpu_op", "user_annotation", "cuda_runtime", "cuda_driver", "python_function"):
            by_thread.setdefault((e.get("pid"), e.get("tid")), []).append(e)
    for thread in by_thread.values():
        thread.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack: list[dict] = []
        for e in thread:
            while stack and stack[-1]["ts"] + stack[-1]["dur"] <= e["ts"]:
                stack.pop()
            if e["name"] in targets:
                chain = " < ".join([e["name"]] + [a["name"][:60] for a in reversed(stack[-depth:])])
                counts[chain] = counts.get(chain, 0) + 1
            stack.append(e)
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def trace_summary(trace_path: Path, profiled_steps: int) -> dict[str, Any]:
    """GPU busy time, kernels, host syncs and each phase's GPU time, from a Chrome trace of the profiler."""
    events = json.loads(gzip.decompress(trace_path.read_bytes()) if trace_path.suffix == ".gz" else trace_path.read_bytes())
    events = [e for e in events.get("traceEvents", []) if e.get("ph") == "X"]
    steps = sorted((e for e in events if str(e.get("name", "")).startswith("ProfilerStep#")
                    and e.get("cat") != "gpu_user_annotation"), key=lambda e: e["ts"])
    steps = steps[-profiled_steps:]
    if not steps:
        return {"error": "no ProfilerStep ranges in the trace"}
    start, end = steps[0]["ts"], steps[-1]["ts"] + steps[-1]["dur"]
    wall_us = end - start
    device = [e for e in events if e.get("cat") in DEVICE_CATEGORIES]
    kernels = [e for e in device if e.get("cat") == "kernel"]
    # the union of device intervals inside the window: busy time, overlaps counted once
    busy, cursor = 0.0, start
    for e in sorted(device, key=lambda e: e["ts"]):
        lo, hi = max(e["ts"], cursor), min(e["ts"] + e["dur"], end)
        if hi > lo:
            busy += hi - lo
            cursor = hi
    in_window = [e for e in kernels if start <= e["ts"] < end]
    # which phase launched each kernel: its launch call (same correlation id) lies in a phase range
    launches = {e["args"]["correlation"]: e["ts"] for e in events
                if e.get("cat") in ("cuda_runtime", "cuda_driver") and "correlation" in e.get("args", {})}
    ranges = sorted((e["ts"], e["ts"] + e["dur"], e["name"][len("phase:"):]) for e in events
                    if str(e.get("name", "")).startswith("phase:") and e.get("cat") != "gpu_user_annotation")
    phase_host_us = {p: 0.0 for p in PHASES}
    for lo, hi, phase in ranges:
        if start <= lo < end:
            phase_host_us[phase] += hi - lo
    phase_gpu_us = {p: 0.0 for p in PHASES}
    unattributed = 0.0
    for e in device:
        launched = launches.get(e.get("args", {}).get("correlation"))
        phase = next((p for lo, hi, p in ranges if launched is not None and lo <= launched < hi), None)
        if phase is None or not start <= launched < end:
            if start <= e["ts"] < end and phase is None:
                unattributed += e["dur"]
            continue
        phase_gpu_us[phase] += e["dur"]
    window_events = [e for e in events if start <= e.get("ts", 0) < end]
    names = [str(e.get("name", "")) for e in window_events]
    n = len(steps)
    # on a GPU a sync is a cudaStreamSynchronize (an `.item()` of a CUDA tensor makes one); on the CPU,
    # where nothing waits, the `.item()`s are counted instead
    sync_targets = set(SYNC_CALLS) if device else {HOST_SYNC_OP}
    return {
        "profiled_steps": n,
        "wall_ms_per_step": wall_us / n / 1e3,
        "gpu_busy_share": busy / wall_us if device else None,
        "device_ms_per_step": sum(e["dur"] for e in device if start <= e["ts"] < end) / n / 1e3 if device else None,
        "kernels_per_step": len(in_window) / n if device else None,
        "kernel_ms_per_step": sum(e["dur"] for e in in_window) / n / 1e3 if device else None,
        "host_syncs_per_step": names.count(HOST_SYNC_OP) / n,
        "sync_callers_per_step": {op: names.count(op) / n for op in SYNC_CALLERS if op in names},
        "sync_calls_per_step": {c: names.count(c) / n for c in SYNC_CALLS if c in names},
        "memcpy_calls_per_step": {c: names.count(c) / n for c in ("cudaMemcpyAsync", "cudaMemcpy") if c in names},
        "syncs_per_step": sum(names.count(c) for c in sync_targets) / n,
        "syncs_by_caller": {chain: count / n for chain, count in callers(window_events, sync_targets).items()},
        "phase_host_ms_per_step": {p: v / n / 1e3 for p, v in phase_host_us.items()},
        "phase_device_ms_per_step": {p: v / n / 1e3 for p, v in phase_gpu_us.items()} if device else None,
        "device_ms_unattributed_per_step": unattributed / n / 1e3 if device else None,
    }


def top_ops(prof, device: str, rows: int) -> dict[str, str]:
    tables = {"cpu": prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=60)}
    if device == "cuda":
        for key in ("self_cuda_time_total", "self_device_time_total"):
            try:
                tables["cuda"] = prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=60)
                break
            except Exception:  # the key's name moved between torch versions
                continue
    return tables


def profile_config(batch_size: int, precision: str, compile_: bool, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import lightning as L
    from hydra.utils import instantiate

    from src.model_card import TrainingLogs
    from src.resume import StepSeed

    total_steps = args.warmup + args.steps + 1 + args.profile_steps
    train = work / f"train_{batch_size}.jsonl"
    if not train.exists():
        bench.write_split(work, total_steps * batch_size)
        (work / "train.jsonl").rename(train)
    setup = argparse.Namespace(batch_size=batch_size, encoder_dir=args.encoder_dir, device=args.device)
    overrides = [f"trainer.precision={precision}", f"trainer.max_steps={total_steps}", f"model.compile={str(compile_).lower()}"]
    cfg = bench.our_config(train, work, setup, overrides)
    L.seed_everything(cfg.seed)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    model = instantiate(cfg.model)
    phases = StepPhases()
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False,
                          callbacks=[StepSeed(cfg.seed), TrainingLogs(), phases.callback])
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    activities = [torch.profiler.ProfilerActivity.CPU]
    if args.device == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    label = f"{batch_size}_{precision}" + ("_compile" if compile_ else "")
    trace = args.out_dir / f"{args.name}_{label}.trace.json"
    prof = torch.profiler.profile(
        activities=activities,
        schedule=torch.profiler.schedule(wait=0, warmup=1, active=args.profile_steps, repeat=1),
        on_trace_ready=lambda p: p.export_chrome_trace(str(trace)),
    )
    first_timed, first_profiled = args.warmup, args.warmup + args.steps
    started = time.perf_counter()
    window: dict[str, Any] = {}

    def on_step_end(step: int) -> None:
        if step == first_timed - 1:  # the timed steps start: synchronize once so they start clean
            if args.device == "cuda":
                torch.cuda.synchronize()
            window["t0"] = time.perf_counter()
            print(f"{label}: {args.warmup} warm-up steps took {window['t0'] - started:.1f} s", flush=True)
        elif step == first_profiled - 1:
            if args.device == "cuda":
                torch.cuda.synchronize()
            window["t1"] = time.perf_counter()
            phases.annotate = True
            prof.start()
        elif step >= first_profiled:
            prof.step()

    phases.on_step_end = on_step_end
    if compile_:
        # every batch has another length: compiled for dynamic shapes from the first step, one
        # compile instead of the two model.compile=true makes by itself (static shapes, then dynamic
        # ones at the second batch length), so that the warm-up fits a short lease
        from torch import _dynamo

        _dynamo.config.assume_static_by_default = False
    try:
        trainer.fit(model, datamodule=datamodule)
    finally:
        if compile_:
            _dynamo.config.assume_static_by_default = True
    phases.close()
    try:
        prof.stop()
    except Exception:  # already stopped by its schedule
        pass
    fit_s = time.perf_counter() - started

    result: dict[str, Any] = {"batch_size": batch_size, "precision": precision,
                              "compile": "dynamic shapes from the first step" if compile_ else False,
                              "steps": {"warmup": args.warmup, "timed": args.steps, "profiled": args.profile_steps},
                              "fit_seconds": fit_s}
    if args.device == "cuda":
        result["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    starts = {step: t for step, phase, t in phases.marks if phase == "forward"}
    if 0 in starts and first_timed in starts:
        result["warmup_seconds"] = starts[first_timed] - starts[0]  # compile and first-step costs
    if {"t0", "t1"} <= window.keys():
        seconds = window["t1"] - window["t0"]
        timed = phases.tokens[first_timed:first_profiled]
        real = int(sum(t[0] for t in timed))
        squared = int(sum(t[1] for t in timed))
        flops = bench.useful_flops(args.encoder_dir, real, squared)
        result["timed"] = {
            "seconds": seconds,
            "ms_per_step": 1e3 * seconds / args.steps,
            "pairs_per_s": args.steps * batch_size / seconds,
            "real_tokens_per_s": real / seconds,
            "model_tflops": flops / seconds / 1e12,
        }
        if args.device == "cuda":  # one pass per batch there (model.sentences_per_pass=auto)
            result["timed"]["padding_share"] = 1 - real / sum(t[2] for t in timed)
        if args.peak_tflops:
            result["timed"]["mfu"] = result["timed"]["model_tflops"] / args.peak_tflops
    result["host_phases"] = phases.host_phases(first_timed, first_profiled)
    if trace.exists():
        result["trace"] = trace_summary(trace, args.profile_steps)
        if "timed" in result and result["trace"].get("device_ms_per_step") is not None:
            # the profiler slows the host; against the unprofiled step, the GPU was busy this share
            result["trace"]["device_share_of_unprofiled_step"] = (
                result["trace"]["device_ms_per_step"] / result["timed"]["ms_per_step"])
        gz = trace.with_suffix(".json.gz")
        gz.write_bytes(gzip.compress(trace.read_bytes()))
        trace.unlink()
        result["trace_file"] = gz.name
    result["top_ops"] = top_ops(prof, args.device, args.rows)
    del trainer, model, datamodule, prof
    if args.device == "cuda":
        torch.cuda.empty_cache()
    return result


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(summary: dict[str, Any]) -> str:
    lines = [f"`{summary['command']}`", "", "Measured on: " + ", ".join(f"{k} {v}" for k, v in summary["setup"].items()), ""]
    lines += ["| config | ms/step | pairs/s | model TFLOP/s | MFU | GPU busy (trace) | device ms/step | kernels/step "
              "| syncs/step | peak GPU MB | warm-up s |", "| --- " * 11 + "|"]
    for r in summary["configs"]:
        if "error" in r:
            lines.append(f"| {r['label']} | FAILED: {r['error'].splitlines()[-1][:120]} |" + " |" * 9)
            continue
        t, tr = r.get("timed", {}), r.get("trace", {})
        syncs = tr.get("syncs_per_step")
        lines.append(
            f"| {r['label']} | {fmt(t.get('ms_per_step'))} | {fmt(t.get('pairs_per_s'), 0)} | {fmt(t.get('model_tflops'), 1)} "
            f"| {fmt(t.get('mfu') and 100 * t['mfu'], 1)}{'%' if t.get('mfu') else ''} "
            f"| {fmt(tr.get('gpu_busy_share') and 100 * tr['gpu_busy_share'], 0)}{'%' if tr.get('gpu_busy_share') else ''} "
            f"| {fmt(tr.get('device_ms_per_step'))} | {fmt(tr.get('kernels_per_step'), 0)} | {fmt(syncs, 1)} "
            f"| {fmt(r.get('peak_memory_mb'), 0)} | {fmt(r.get('warmup_seconds'), 1)} |")
    lines += ["", "Where a step's time goes, ms per step: host time of each phase (mean of the timed steps, no "
              "profiler; batches differ in length, so a median would not add up), and the GPU time of the "
              "kernels launched from it (profiled steps):", "",
              "| config | " + " | ".join(f"{p} host | {p} GPU" for p in PHASES) + " | step host |",
              "| --- " * (2 + 2 * len(PHASES)) + "|"]
    for r in summary["configs"]:
        if "error" in r:
            continue
        host = r.get("host_phases", {}).get("mean_ms", {})
        gpu = (r.get("trace") or {}).get("phase_device_ms_per_step") or {}
        lines.append(f"| {r['label']} | " + " | ".join(f"{fmt(host.get(p))} | {fmt(gpu.get(p))}" for p in PHASES)
                     + f" | {fmt(host.get('step'))} |")
    for r in summary["configs"]:
        if "error" in r:
            lines += ["", f"### {r['label']}: failed", "", "```", r["error"][-3000:], "```"]
            continue
        tr = r.get("trace", {})
        lines += ["", f"### {r['label']}", "",
                  f"host syncs ({HOST_SYNC_OP}) per step: {fmt(tr.get('host_syncs_per_step'), 1)}, called from "
                  f"{tr.get('sync_callers_per_step')}; sync calls per step: "
                  f"{tr.get('sync_calls_per_step')}; memcpy calls per step: {tr.get('memcpy_calls_per_step')}; "
                  f"GPU time per step not attributed to a phase: {fmt(tr.get('device_ms_unattributed_per_step'))} ms", "",
                  "Syncs per step by caller (on a GPU cudaStreamSynchronize and the like, on the CPU `.item()`s):", ""]
        lines += [f"- {count:g} x {chain}" for chain, count in (tr.get("syncs_by_caller") or {}).items()]
        for kind, table in r.get("top_ops", {}).items():
            lines += ["", f"Top ops by self {kind.upper()} time ({r['steps']['profiled']} profiled steps):", "", "```", table.rstrip(), "```"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    parser.add_argument("--encoder-dir", type=Path, help="encoder folder (vs_sentence_transformers.py --save-encoder)")
    parser.add_argument("--encoder", choices=tuple(bench.RANDOM_SHAPES), default="mbert-size",
                        help="without --encoder-dir: build this random encoder")
    parser.add_argument("--tokenizer", type=Path, help="MiniLM's tokenizer files (default: the package's)")
    parser.add_argument("--config", action="append", metavar="BATCH:PRECISION[:compile]",
                        help="one profiled training setup (repeatable); default 16:bf16-mixed")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--steps", type=int, default=60, help="timed steps, without the profiler")
    parser.add_argument("--profile-steps", type=int, default=10)
    parser.add_argument("--rows", type=int, default=20, help="rows of each top-ops table")
    parser.add_argument("--threads", type=int, default=8, help="torch CPU threads")
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 peak for MFU (known GPUs by default)")
    parser.add_argument("--out-dir", type=Path, default=bench.RESULTS)
    parser.add_argument("--name", default="gpu_profile")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda, but torch sees no CUDA GPU")
    if args.device == "cuda" and args.peak_tflops is None:
        name = torch.cuda.get_device_name()
        args.peak_tflops = next((peak for gpu, peak in bench.PEAK_BF16_TFLOPS.items() if gpu in name), None)
    torch.set_num_threads(args.threads)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    configs = []
    for spec in args.config or ["16:bf16-mixed"]:
        batch, precision, *rest = spec.split(":")
        configs.append((int(batch), precision, rest == ["compile"]))
    summary: dict[str, Any] = {
        "command": "python benchmarks/gpu_profile.py " + " ".join(sys.argv[1:]),
        "setup": {"device": args.device, "peak_tflops": args.peak_tflops, **bench.machine(args.device)},
        "configs": [],
    }
    failed = 0
    with tempfile.TemporaryDirectory(prefix="gpu-profile-") as tmp:
        work = Path(tmp)
        if args.encoder_dir is None:
            args.encoder_dir = bench.prepare_encoder(work / "encoder", args.encoder, args.tokenizer)
        for batch, precision, compile_ in configs:
            label = f"b{batch} {precision}" + (" compile" if compile_ else "")
            print(f"profiling {label} ...", flush=True)
            try:
                result = profile_config(batch, precision, compile_, args, work)
            except Exception:
                failed += 1
                result = {"batch_size": batch, "precision": precision, "compile": compile_, "error": traceback.format_exc()}
                print(result["error"], file=sys.stderr, flush=True)
            result["label"] = label
            summary["configs"].append(result)
            (args.out_dir / f"{args.name}.json").write_text(json.dumps(summary, indent=2) + "\n")
            (args.out_dir / f"{args.name}.md").write_text(markdown(summary))
    print(markdown(summary))
    if failed:
        sys.exit(f"error: {failed} of {len(configs)} configs failed")


if __name__ == "__main__":
    main()
