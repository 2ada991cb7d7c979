"""Drive a runner over the reference and collect the measurements.

The result is the content of ``measurements.json`` (format 1)::

    {"format_version": 1, "status": "measured", "kind": "llm"|"module",
     "artifact": {...}, "reference": {...},
     "summary": {cosine, top1_agreement, token_agreement, first_divergence,
                 max_abs_error, mean_abs_error, perplexity, reference_perplexity,
                 perplexity_ratio, size_mb, load_time_s, prefill_tokens_per_s,
                 decode_tokens_per_s, peak_rss_mb},
     "runs": [{"name", ...figures}], "runner": {TextLLMRunner stats} | null}

Per-position series (for the plot) go to ``positions.json``. Accuracy figures
are deterministic for a given artifact, bit for bit (:mod:`.metrics`); timings
and memory are not: :func:`.report.write_reports` moves them (the summary's
:data:`.expectations.TIMING_FIGURES`, the runner's clock readings and
``timing_source``) to ``timings.json``.
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from . import metrics
from .runners import LLMRunner, ModuleRunner

__all__ = ["FORMAT_VERSION", "measure_llm", "measure_module", "peak_rss_mb"]

FORMAT_VERSION = 1


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (MiB), its own only.

    On Linux that is ``VmHWM`` of ``/proc/self/status``. ``ru_maxrss`` would be
    wrong there: it survives ``execve``, so a step process started by a large
    build process reports the parent's peak (a child of a 300 MB process says
    311 MB while its own VmHWM is 11 MB), and ``max_peak_memory_mb`` would gate
    on the wrong process. The worker counts its peak the same way
    (``modelbuild.worker.peak_rss_bytes``). macOS has no VmHWM; its
    ``ru_maxrss`` (bytes) is used there.
    """
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024  # kB
        except OSError:
            pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


def _strip(fig: dict) -> dict:
    return {k: v for k, v in fig.items() if k != "per_position"}


def _rate(tokens: int, seconds: float) -> float | None:
    return tokens / seconds if seconds > 0 and tokens > 0 else None


def _text_runner(runner: LLMRunner, prompts: list[dict], max_new_tokens: int, log: Callable) -> dict | None:
    """Generate with ExecuTorch's TextLLMRunner (the app's code path) and keep its stats."""
    if runner.pte is None or runner.tokenizer is None:
        return None
    from executorch.extension.llm.runner import GenerationConfig, TextLLMRunner

    tr = TextLLMRunner(str(runner.pte), str(runner.tokenizer))
    results = []
    for p in prompts:
        stats: list = []
        config = GenerationConfig(echo=False, max_new_tokens=max_new_tokens, temperature=0.0,
                                  num_bos=p.get("runner_num_bos", 0))
        # No token callback: the binding decodes each piece as UTF-8 and raises on
        # a partial multi-byte piece, which random or broken models emit.
        tr.generate(p["rendered"], config, stats_callback=stats.append)
        sys.stdout.flush()
        tr.reset()
        if stats:
            s = json.loads(stats[-1].to_json_string())
            results.append(s)
    if not results:
        return None
    prompt_tokens = sum(s["prompt_tokens"] for s in results)
    generated = sum(s["generated_tokens"] for s in results)
    prefill_ms = sum(max(s["prompt_eval_end_ms"] - s["inference_start_ms"], 0) for s in results)
    decode_ms = sum(max(s["inference_end_ms"] - s["prompt_eval_end_ms"], 0) for s in results)
    load_ms = results[0]["model_load_end_ms"] - results[0]["model_load_start_ms"]
    out = {
        "prompt_tokens": [s["prompt_tokens"] for s in results],
        # False when the runner's tokenizer reads the prompt differently from the reference's.
        "prompt_tokens_match": [s["prompt_tokens"] == len(p["prompt_ids"]) for s, p in zip(results, prompts)],
        "generated_tokens": [s["generated_tokens"] for s in results],
        "prefill_ms": prefill_ms, "decode_ms": decode_ms, "load_ms": load_ms,
        # The runner's clock ticks in milliseconds: a tiny model may finish in 0 ms.
        "prefill_tokens_per_s": _rate(prompt_tokens, prefill_ms / 1000),
        "decode_tokens_per_s": _rate(generated, decode_ms / 1000),
    }
    log(f"TextLLMRunner: prompt tokens {out['prompt_tokens']}, generated {out['generated_tokens']}")
    return out


def measure_llm(runner: LLMRunner, ref: dict, ref_dir: Path, *, max_new_tokens: int | None,
                eval_tokens: int | None, use_text_runner: bool, log: Callable = print) -> tuple[dict, dict]:
    """Measure an LLM artifact against an LLM reference: (measurements, positions)."""
    runs, positions = [], {}
    n_new = max_new_tokens or ref["max_new_tokens"]
    agreements, firsts, prefill_t, decode_t, prefill_n, decode_n = [], [], 0.0, 0.0, 0, 0
    all_ref, all_got = [], []
    for i, p in enumerate(ref["prompts"]):
        seq = p["prompt_ids"] + p["greedy_ids"]
        if len(seq) > runner.max_seq_len:
            raise ValueError(f"prompt {i} needs {len(seq)} positions; the artifact's max_seq_len is {runner.max_seq_len}")
        ref_logits = np.load(ref_dir / p["logits"])
        got, _ = runner.score(seq)
        fig = metrics.compare_logits(ref_logits, got)
        want = p["greedy_ids"][:n_new]
        room = runner.max_seq_len - len(p["prompt_ids"])
        gen = runner.greedy(p["prompt_ids"], min(n_new, room), ref["eos_ids"])
        agree = metrics.token_agreement(want, gen["tokens"])
        agreements.append(agree["token_agreement"])
        firsts.append(agree["first_divergence"])
        prefill_t += gen["prefill_s"]; decode_t += gen["decode_s"]
        prefill_n += gen["prefill_tokens"]; decode_n += gen["decode_tokens"]
        all_ref.append(ref_logits); all_got.append(got)
        name = f"prompt {i}"
        positions[name] = {**fig["per_position"], "prompt_tokens": len(p["prompt_ids"])}
        runs.append({"name": name, "prompt": p["prompt"], "positions": len(seq), **_strip(fig), **agree})
        log(f"{name}: cosine {fig['cosine']:.6f}, top-1 {fig['top1_agreement']:.3f}, "
            f"tokens {agree['token_agreement']:.3f} (first divergence {agree['first_divergence']})")
    ev = ref["eval"]
    cap = min(len(ev["ids"]), runner.max_seq_len, eval_tokens or len(ev["ids"]))
    ids = ev["ids"][:cap]
    ref_eval = np.load(ref_dir / ev["logits"])[:cap]
    got_eval, _ = runner.score(ids)
    fig = metrics.compare_logits(ref_eval, got_eval)
    nll = metrics.nll_per_token(got_eval, ids)
    ppl = metrics.perplexity(nll)
    ref_ppl = metrics.perplexity(ev["nll"][: cap - 1])
    positions["eval text"] = fig["per_position"]
    runs.append({"name": "eval text", "positions": cap, **_strip(fig), "perplexity": ppl,
                 "reference_perplexity": ref_ppl})
    all_ref.append(ref_eval); all_got.append(got_eval)
    overall = metrics.compare_arrays(np.concatenate(all_ref), np.concatenate(all_got))
    top1 = float(np.mean([m for r in positions.values() for m in r["top1_match"]]))
    text_runner = _text_runner(runner, ref["prompts"], n_new, log) if use_text_runner else None
    prefill_rate = _rate(prefill_n, prefill_t)
    decode_rate = _rate(decode_n, decode_t)
    if text_runner and text_runner["decode_tokens_per_s"]:
        decode_rate = text_runner["decode_tokens_per_s"]
    if text_runner and text_runner["prefill_tokens_per_s"]:
        prefill_rate = text_runner["prefill_tokens_per_s"]
    summary = {
        "cosine": min(r["cosine"] for r in runs),
        "top1_agreement": top1,
        "token_agreement": float(np.mean(agreements)) if agreements else None,
        "first_divergence": min((f for f in firsts if f is not None), default=None),
        "max_abs_error": overall["max_abs_error"],
        "mean_abs_error": overall["mean_abs_error"],
        "perplexity": ppl,
        "reference_perplexity": ref_ppl,
        "perplexity_ratio": ppl / ref_ppl if ref_ppl and np.isfinite(ref_ppl) else None,
        "size_mb": runner.size_bytes / 1e6,
        "load_time_s": runner.load_time_s,
        "prefill_tokens_per_s": prefill_rate,
        "decode_tokens_per_s": decode_rate,
        "peak_rss_mb": peak_rss_mb(),
    }
    return {
        "format_version": FORMAT_VERSION, "status": "measured", "kind": "llm",
        "artifact": {"kind": runner.artifact_kind, "size_bytes": runner.size_bytes, **runner.info},
        "summary": summary, "runs": runs, "runner": text_runner,
        "timing_source": "TextLLMRunner" if text_runner else "token-by-token loop",
    }, positions


def measure_module(runner: ModuleRunner, ref: dict, ref_dir: Path, log: Callable = print) -> tuple[dict, dict]:
    """Measure a generic-module artifact on the reference's seeded inputs."""
    import time

    runs, positions, all_ref, all_got, seconds = [], {}, [], [], 0.0
    for s, sample in enumerate(ref["samples"]):
        arrays = [np.load(ref_dir / f) for f in sample["inputs"]]
        want = [np.load(ref_dir / f) for f in sample["outputs"]]
        t0 = time.perf_counter()
        got = runner.run(arrays)
        seconds += time.perf_counter() - t0
        if len(got) != len(want):
            raise ValueError(f"the artifact returns {len(got)} outputs, the reference {len(want)}")
        for k, (w, g) in enumerate(zip(want, got)):
            g = np.asarray(g).reshape(w.shape) if np.asarray(g).size == w.size else np.asarray(g)
            fig = metrics.compare_arrays(w, g)
            flat_w, flat_g = w.reshape(-1).astype(np.float64), g.reshape(-1).astype(np.float64)
            if w.ndim >= 1 and w.shape[-1] > 1:
                fig["top1_agreement"] = float((w.reshape(-1, w.shape[-1]).argmax(-1) ==
                                               g.reshape(-1, w.shape[-1]).argmax(-1)).mean())
            name = f"sample {s} output {k}"
            positions[name] = {"abs_error": [float(x) for x in np.abs(flat_w - flat_g)]}
            runs.append({"name": name, **fig})
            all_ref.append(flat_w); all_got.append(flat_g)
    overall = metrics.compare_arrays(np.concatenate(all_ref), np.concatenate(all_got))
    top1 = [r["top1_agreement"] for r in runs if "top1_agreement" in r]
    summary = {
        "cosine": min(r["cosine"] for r in runs),
        "top1_agreement": float(np.mean(top1)) if top1 else None,
        "max_abs_error": overall["max_abs_error"],
        "mean_abs_error": overall["mean_abs_error"],
        "size_mb": runner.size_bytes / 1e6,
        "load_time_s": runner.load_time_s,
        "latency_ms": 1000 * seconds / max(len(ref["samples"]), 1),
        "peak_rss_mb": peak_rss_mb(),
    }
    log(f"module: cosine {summary['cosine']:.6f}, max abs error {summary['max_abs_error']:.3g}")
    return {
        "format_version": FORMAT_VERSION, "status": "measured", "kind": "module",
        "artifact": {"kind": runner.artifact_kind, "size_bytes": runner.size_bytes},
        "summary": summary, "runs": runs, "runner": None, "timing_source": "wall clock per sample",
    }, positions
