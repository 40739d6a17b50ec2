"""`llamaherd models quantize` and `llamaherd models perplexity`: choosing a quant.

Both run on the machine that holds the files, with the worker's llama.cpp layer, and need
no cluster. Bad input is one line on stderr and exit 2; a llama.cpp failure exit 1; Ctrl-C
exit 130. llama.cpp is imported only when a command runs, so building the parser stays
cheap for every other `llamaherd` command.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from common.errors import InvalidArgument, LlamaherdError

QUANTIZE_DESCRIPTION = (
    "Quantize a full-precision (F32/F16/BF16) GGUF model with llama.cpp's own quantizer, as "
    "llama-quantize does. Refuses an already quantized source unless --allow-requantize, and "
    "an existing destination unless --force."
)
PERPLEXITY_DESCRIPTION = (
    "Perplexity of a model over a text file, measured as llama.cpp's llama-perplexity does: "
    "the text is cut into chunks of --ctx tokens and the second half of each is scored. "
    "Lower is better; compare quants of one model on one text and context. The text must "
    "be at least two contexts long."
)


def add_model_tool_parsers(actions: Any) -> None:
    """Adds `quantize` and `perplexity` to `llamaherd models`'s actions."""
    quantize = actions.add_parser(
        "quantize", help="quantize a GGUF model with llama.cpp (F16 -> Q4_K_M, ...)",
        description=QUANTIZE_DESCRIPTION,
    )  # fmt: skip
    quantize.add_argument("src", type=Path, help="the source GGUF (F32, F16 or BF16)")
    quantize.add_argument("dst", type=Path, help="the GGUF file to write")
    quantize.add_argument(
        "--type", dest="file_type", required=True, metavar="TYPE",
        help="the quantization, as llama-quantize names it: Q4_K_M, Q5_K_M, Q8_0, ...",
    )  # fmt: skip
    quantize.add_argument(
        "--allow-requantize", action="store_true",
        help="quantize a source that is quantized already (quality suffers twice)",
    )  # fmt: skip
    quantize.add_argument("--force", action="store_true", help="overwrite DST if it exists")
    quantize.add_argument(
        "--threads", type=int, default=0, metavar="N",
        help="quantizer threads (default: every hardware thread)",
    )  # fmt: skip
    quantize.add_argument("--json", action="store_true", help="print JSON, for scripts")
    quantize.set_defaults(run=run_quantize)

    perplexity = actions.add_parser(
        "perplexity", help="perplexity of a GGUF model over a text file (llama-perplexity's way)",
        description=PERPLEXITY_DESCRIPTION,
    )  # fmt: skip
    perplexity.add_argument("model", type=Path, help="the GGUF model")
    perplexity.add_argument("textfile", type=Path, help="a UTF-8 text file")
    perplexity.add_argument(
        "--ctx", type=int, default=512, metavar="N", help="tokens per chunk (default: 512)"
    )
    perplexity.add_argument(
        "--batch", type=int, default=None, metavar="N",
        help="tokens per llama.cpp batch (default: --ctx)",
    )  # fmt: skip
    perplexity.add_argument(
        "--threads", type=int, default=0, metavar="N",
        help="threads (default: the CPUs this process may use)",
    )  # fmt: skip
    perplexity.add_argument("--json", action="store_true", help="print JSON, for scripts")
    perplexity.set_defaults(run=run_perplexity)


def _fail(command: str, message: str, code: int) -> int:
    print(f"llamaherd models {command}: {message}", file=sys.stderr)
    return code


def _exit_code(exc: LlamaherdError) -> int:
    """2 for input the user can fix here, 1 for a failure inside llama.cpp."""
    from common.errors import AlreadyExists, FailedPrecondition

    return 2 if isinstance(exc, InvalidArgument | AlreadyExists | FailedPrecondition) else 1


class _NoProgress:
    """Stands in for rich's Progress where rich is not installed (a bare worker node)."""

    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, description: str, total: float | None = None) -> int:
        print(f"{description} ...", file=sys.stderr, flush=True)
        return 0

    def update(self, task: int, **fields: Any) -> None:
        return None

    def stop(self) -> None:
        return None


def _progress() -> Any:
    """A progress bar with elapsed time on stderr (stdout stays clean for --json)."""
    try:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )
    except ImportError:  # rich comes with the coordinator extra only
        return _NoProgress()

    return Progress(
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=Console(stderr=True), transient=True,
    )  # fmt: skip


def run_quantize(args: argparse.Namespace) -> int:
    from worker.llamacpp.quantize import (
        QuantizeRequest,
        check_request,
        parse_file_type,
        quantize_in_thread,
    )

    try:
        file_type = parse_file_type(args.file_type)
        request = QuantizeRequest(
            args.src, args.dst, file_type, allow_requantize=args.allow_requantize,
            force=args.force, threads=max(0, args.threads),
        )  # fmt: skip
        check_request(request)
    except LlamaherdError as exc:
        return _fail("quantize", exc.message, _exit_code(exc))
    started = time.monotonic()
    with _progress() as bar:
        task = bar.add_task(f"{args.src.name} -> {file_type}", total=None)

        def on_tensor(done: int, total: int, name: str) -> None:
            bar.update(task, completed=done, total=total)

        thread, errors = quantize_in_thread(request, on_tensor)
        try:
            while thread.is_alive():
                thread.join(0.1)
        except KeyboardInterrupt:
            # llama.cpp's quantizer cannot be stopped midway: drop the partial file and leave
            # at once rather than wait for it (or let interpreter shutdown meet it running).
            bar.stop()
            args.dst.unlink(missing_ok=True)
            print(
                f"llamaherd models quantize: interrupted; removed the partial {args.dst}",
                file=sys.stderr, flush=True,
            )  # fmt: skip
            os._exit(130)
    if errors:
        error = errors[0]
        if isinstance(error, LlamaherdError):
            return _fail("quantize", error.message, _exit_code(error))
        raise error
    result = {
        "src": str(args.src), "dst": str(args.dst), "type": file_type,
        "src_bytes": args.src.stat().st_size, "dst_bytes": args.dst.stat().st_size,
        "seconds": round(time.monotonic() - started, 3),
    }  # fmt: skip
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        from common.memory import format_bytes

        print(
            f"wrote {args.dst} ({file_type}, {format_bytes(result['dst_bytes'])} from "
            f"{format_bytes(result['src_bytes'])}) in {result['seconds']:.1f} s"
        )
    return 0


def run_perplexity(args: argparse.Namespace) -> int:
    from common.gguf import read_gguf

    try:
        if not args.model.exists():
            raise InvalidArgument(f"{args.model} does not exist")
        read_gguf(args.model)  # refuse a non-GGUF before llama.cpp sees it
        text = _read_text(args.textfile)
        if args.batch is not None and args.batch < 1:
            raise InvalidArgument(f"--batch must be positive, got {args.batch}")
    except LlamaherdError as exc:
        return _fail("perplexity", exc.message, _exit_code(exc))
    from worker.llamacpp.perplexity import measure

    try:
        with _progress() as bar:
            task = bar.add_task(f"{args.model.name}: chunks", total=None)

            def on_chunk(done: int, total: int, ppl: float) -> None:
                bar.update(
                    task, completed=done, total=total,
                    description=f"{args.model.name}: PPL {ppl:.4f}",
                )  # fmt: skip

            result = measure(args.model, text, args.ctx, args.batch, max(0, args.threads), on_chunk)
    except LlamaherdError as exc:
        return _fail("perplexity", exc.message, _exit_code(exc))
    except KeyboardInterrupt:
        return _fail("perplexity", "interrupted", 130)
    if args.json:
        doc = {"model": str(args.model), "text": str(args.textfile), **result.to_json()}
        print(json.dumps(doc, indent=2))
    else:
        print(
            f"PPL = {result.perplexity:.4f} +/- {result.stderr:.5f} over {result.chunks} "
            f"chunks of {result.n_ctx} tokens ({result.scored_tokens} scored of "
            f"{result.text_tokens}), {result.tokens_per_second:.1f} tokens/s"
        )
    return 0


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise InvalidArgument(f"{path} does not exist") from exc
    except IsADirectoryError as exc:
        raise InvalidArgument(f"{path} is a directory, not a text file") from exc
    except UnicodeDecodeError as exc:
        raise InvalidArgument(
            f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from exc
    except OSError as exc:
        raise InvalidArgument(f"cannot read {path}: {exc.strerror or exc}") from exc
