"""`llamaherd models convert HF_DIR OUT.gguf`: a Hugging Face checkpoint to a GGUF file.

The converter is llama.cpp's own `convert_hf_to_gguf.py`, never a copy of it in this
project. It comes from the llama-cpp-python source distribution of the *installed* version,
so the llama.cpp that writes the file is the one our worker loads it with: pip downloads that
sdist once (PyPI's hash checked by pip), and the converter's files (`convert_hf_to_gguf.py`,
`conversion/`, `gguf-py/`, the licence) are unpacked into
`~/.cache/llamaherd/convert/llama-cpp-python-VERSION/`. The converter then runs as a
subprocess under a Python that has the `convert` extra (torch, transformers, sentencepiece):
this one by default, or `--python` for a separate venv that keeps torch off serving nodes.

Everything is refused before the converter starts when it can be: no config.json, no
architecture, no weights, a shard the index names but the folder lacks, no tokenizer, an
architecture this llama.cpp's converter does not know, a missing extra.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from common.errors import FailedPrecondition, InvalidArgument, LlamaherdError, NotFound

PROG = "llamaherd models convert"
OUTTYPES = ("f16", "bf16", "q8_0", "f32")
SDIST_PACKAGE = "llama-cpp-python"
# What the converter imports (gguf-py comes with it, from the same sdist). Module names.
CONVERTER_MODULES = ("torch", "transformers", "sentencepiece", "safetensors", "numpy", "yaml")
# The parts of the vendored llama.cpp that the converter needs, and its licence (MIT).
CONVERTER_PARTS = ("convert_hf_to_gguf.py", "conversion", "gguf-py", "LICENSE")
SCRIPT = "convert_hf_to_gguf.py"
EXTRA_HINT = "pip install 'llamaherd[convert]'"
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tekken.json")


def default_cache_dir() -> Path:
    """Where converters are unpacked: $XDG_CACHE_HOME/llamaherd/convert, else ~/.cache/..."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "llamaherd" / "convert"


def llama_cpp_version() -> str:
    """The installed llama-cpp-python's version: the converter is pinned to it."""
    try:
        return importlib.metadata.version(SDIST_PACKAGE)
    except importlib.metadata.PackageNotFoundError as exc:
        raise FailedPrecondition(
            f"{SDIST_PACKAGE} is not installed here, and the converter is taken from its "
            "source for the same version: pip install llamaherd"
        ) from exc


@dataclass(frozen=True)
class Checkpoint:
    """A Hugging Face checkpoint folder, as far as it was checked before converting."""

    path: Path
    architecture: str
    weights: tuple[Path, ...]

    @property
    def weight_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.weights)


def inspect_checkpoint(hf_dir: Path) -> Checkpoint:
    """Checks `hf_dir` the way the converter will read it: config.json naming an
    architecture, weights (model*.safetensors or pytorch_model*.bin, every shard that an
    index names) and a tokenizer. Raises NotFound or InvalidArgument naming the problem."""
    if not hf_dir.is_dir():
        what = "is not a directory" if hf_dir.exists() else "does not exist"
        raise NotFound(f"{hf_dir} {what}: pass the folder of a Hugging Face checkpoint")
    config_path = hf_dir / "config.json"
    if not config_path.is_file():
        raise InvalidArgument(
            f"{hf_dir} has no config.json: it is not a Hugging Face checkpoint folder"
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidArgument(f"{config_path} is not valid JSON: {exc}") from exc
    architectures = config.get("architectures") if isinstance(config, dict) else None
    if (
        not isinstance(architectures, list)
        or not architectures
        or not all(isinstance(a, str) and a for a in architectures)
    ):
        raise InvalidArgument(
            f'{config_path} names no architecture ("architectures": ["...ForCausalLM"] '
            "is missing or empty)"
        )
    weights = _weights(hf_dir)
    if not any((hf_dir / name).is_file() for name in TOKENIZER_FILES):
        raise InvalidArgument(
            f"{hf_dir} has no tokenizer ({', '.join(TOKENIZER_FILES)}): save the tokenizer "
            "with the model (tokenizer.save_pretrained)"
        )
    return Checkpoint(hf_dir, architectures[0], weights)


def _weights(hf_dir: Path) -> tuple[Path, ...]:
    for prefix, suffix in (("model", ".safetensors"), ("pytorch_model", ".bin")):
        index = hf_dir / f"{prefix}{suffix}.index.json"
        if index.is_file():
            return _indexed_shards(index)
        found = sorted(
            p for p in hf_dir.iterdir()
            if p.name.startswith(prefix) and p.name.endswith(suffix) and p.is_file()
        )  # fmt: skip
        if found:
            return tuple(found)
    raise InvalidArgument(f"{hf_dir} has no weights (model*.safetensors or pytorch_model*.bin)")


def _indexed_shards(index: Path) -> tuple[Path, ...]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
        raise InvalidArgument(f"{index} is not a weight index: {exc}") from exc
    if not isinstance(weight_map, dict) or not weight_map:
        raise InvalidArgument(f"{index} has no weight_map")
    shards = sorted({index.parent / str(name) for name in weight_map.values()})
    missing = [p.name for p in shards if not p.is_file()]
    if missing:
        raise InvalidArgument(
            f"{index.name} names {len(shards)} shard(s) but {len(missing)} are missing from "
            f"{index.parent}: {', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}"
        )
    return tuple(shards)


def known_architectures(converter_dir: Path) -> frozenset[str]:
    """The Hugging Face architectures this converter registers (`@ModelBase.register("...")`
    in conversion/*.py), read as text so that nothing heavy is imported. Empty when the
    layout is not the expected one: then the converter itself decides."""
    names: set[str] = set()
    for module in sorted((converter_dir / "conversion").glob("*.py")):
        text = module.read_text(encoding="utf-8", errors="replace")
        for args in re.findall(r"@ModelBase\.register\((.*?)\)", text, flags=re.DOTALL):
            names.update(re.findall(r"[\"']([A-Za-z0-9_.]+)[\"']", args))
    return frozenset(names)


# --- the converter's files -------------------------------------------------------------

Download = Callable[[str, Path], Path]


def pip_download_sdist(version: str, dest: Path) -> Path:
    """Downloads the llama-cpp-python sdist of `version` into `dest` with this Python's pip
    (which checks the index's sha256); returns the file."""
    command = [
        sys.executable, "-m", "pip", "download", f"{SDIST_PACKAGE}=={version}", "--no-deps",
        "--no-binary", ":all:", "--dest", str(dest), "--quiet", "--disable-pip-version-check",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise FailedPrecondition(
            f"could not download the {SDIST_PACKAGE} {version} source with pip ({last}); "
            "on a machine without PyPI, pass the file with --sdist"
        )
    return _sdist_in(dest, version)


def _sdist_in(folder: Path, version: str) -> Path:
    found = sorted(folder.glob(f"llama_cpp_python-{version}.tar.gz"))
    if not found:
        raise FailedPrecondition(f"pip left no llama_cpp_python-{version}.tar.gz in {folder}")
    return found[0]


def ensure_converter(
    version: str,
    cache_dir: Path,
    download: Download = pip_download_sdist,
    sdist: Path | None = None,
) -> Path:
    """The folder holding llama.cpp's converter for llama-cpp-python `version`, unpacked into
    `cache_dir` from `sdist` (else from what `download` fetches) the first time."""
    target = cache_dir / f"{SDIST_PACKAGE}-{version}"
    if (target / SCRIPT).is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".unpack-", dir=cache_dir) as tmp:
        work = Path(tmp)
        archive = sdist if sdist is not None else download(version, work)
        unpacked = work / "converter"
        unpack_converter(archive, version, unpacked)
        with contextlib.suppress(FileExistsError, OSError):
            # Another run may have finished first; its copy is as good as ours.
            unpacked.rename(target)
    if not (target / SCRIPT).is_file():
        raise FailedPrecondition(f"could not unpack the converter into {target}")
    return target


def unpack_converter(archive: Path, version: str, dest: Path) -> None:
    """Extracts the converter's parts of the vendored llama.cpp from the sdist `archive`,
    refusing an archive of another version or one without them."""
    prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = [m for m in tar.getmembers() if _wanted(m, prefix)]
            present = {m.name[len(prefix) :].split("/", 1)[0] for m in members}
            missing = [part for part in CONVERTER_PARTS if part not in present]
            if missing:
                raise FailedPrecondition(
                    f"{archive.name} is not the llama-cpp-python {version} source: it lacks "
                    f"{prefix}{missing[0]}"
                )
            for m in members:
                m.name = m.name[len(prefix) :]
            dest.mkdir(parents=True)
            tar.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise FailedPrecondition(f"cannot read {archive}: {exc}") from exc


def _wanted(member: tarfile.TarInfo, prefix: str) -> bool:
    if not (member.isfile() or member.isdir()) or not member.name.startswith(prefix):
        return False
    rest = member.name[len(prefix) :]
    return rest.split("/", 1)[0] in CONVERTER_PARTS and ".." not in rest.split("/")


# --- running it ------------------------------------------------------------------------


def missing_modules(python: str) -> list[str]:
    """Which of the converter's imports `python` lacks (asked in a subprocess, so torch is
    never imported here)."""
    probe = (
        "import importlib.util, sys; "
        "print(' '.join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))"
    )
    try:
        done = subprocess.run(
            [python, "-c", probe, *CONVERTER_MODULES],
            capture_output=True, text=True, check=False, timeout=60,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FailedPrecondition(f"cannot run {python}: {exc}") from exc
    if done.returncode != 0:
        raise FailedPrecondition(f"{python} failed: {done.stderr.strip()[-200:]}")
    return done.stdout.split()


def converter_command(
    python: str, converter_dir: Path, checkpoint: Checkpoint, out: Path, outtype: str
) -> list[str]:
    return [
        python, str(converter_dir / SCRIPT), str(checkpoint.path),
        "--outfile", str(out), "--outtype", outtype,
    ]  # fmt: skip


def converter_env(base: dict[str, str]) -> dict[str, str]:
    """The converter's environment: unbuffered, so its lines stream as it works; always
    with the gguf-py it ships (NO_LOCAL_GGUF would pick an installed gguf of another age);
    and the Hugging Face hub off unless the caller set HF_HUB_OFFLINE: it converts the
    folder it is given, and an offline node would otherwise wait on connection timeouts."""
    env = {k: v for k, v in base.items() if k != "NO_LOCAL_GGUF"}
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def run_converter(
    command: Sequence[str], env: dict[str, str], on_line: Callable[[str], None]
) -> int:
    """Runs the converter, handing each line it prints (stdout and stderr, tqdm's \\r
    updates as lines) to `on_line`; returns its exit code."""
    with subprocess.Popen(
        list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
    ) as proc:
        assert proc.stdout is not None
        pending = b""
        while chunk := os.read(proc.stdout.fileno(), 65536):
            pending += chunk
            *lines, pending = re.split(rb"[\r\n]", pending)
            for line in lines:
                if line.strip():
                    on_line(line.decode("utf-8", errors="replace"))
        if pending.strip():
            on_line(pending.decode("utf-8", errors="replace"))
        return proc.wait()


# --- the command -----------------------------------------------------------------------


def add_convert_parser(actions: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """`llamaherd models convert`, added to the `models` actions."""
    parser = actions.add_parser(
        "convert", help="convert a Hugging Face checkpoint folder to a GGUF file",
        description="Convert a Hugging Face checkpoint (config.json, safetensors or .bin "
        "weights, tokenizer) to GGUF with llama.cpp's own convert_hf_to_gguf.py, taken from "
        "the source of the installed llama-cpp-python (downloaded once with pip into "
        f"{default_cache_dir()}). Needs the convert extra: {EXTRA_HINT}.",
    )  # fmt: skip
    parser.add_argument("hf_dir", type=Path, metavar="HF_DIR", help="the checkpoint folder")
    parser.add_argument("out", type=Path, metavar="OUT.gguf", help="the GGUF file to write")
    parser.add_argument(
        "--outtype", choices=OUTTYPES, default="f16",
        help="tensor type of the output (default f16; quantize further with "
        "`llamaherd models quantize`)",
    )  # fmt: skip
    parser.add_argument(
        "--python", metavar="PATH", default=sys.executable,
        help="the Python that runs the converter, with the convert extra installed "
        "(default: this one); a separate venv keeps torch off serving nodes",
    )  # fmt: skip
    parser.add_argument(
        "--sdist", type=Path, metavar="FILE",
        help="the llama_cpp_python-VERSION.tar.gz to take the converter from, for machines "
        "without PyPI (default: download it with pip, once)",
    )  # fmt: skip
    parser.add_argument(
        "--cache-dir", type=Path, metavar="DIR", default=None,
        help=f"where converters are unpacked (default: {default_cache_dir()})",
    )  # fmt: skip
    parser.add_argument("--force", action="store_true", help="overwrite OUT.gguf if it exists")
    parser.add_argument("--json", action="store_true", help="print a JSON summary, for scripts")
    parser.set_defaults(run=run_convert)


def run_convert(args: argparse.Namespace) -> int:
    """One line and exit 2 for bad input, 1 when the converter cannot run or fails."""
    try:
        return _convert(args)
    except (InvalidArgument, NotFound) as exc:
        print(f"{PROG}: {exc.message}", file=sys.stderr)
        return 2
    except LlamaherdError as exc:
        print(f"{PROG}: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; nothing was written", file=sys.stderr)
        return 130


def _check_out(out: Path, force: bool) -> None:
    if out.suffix != ".gguf":
        raise InvalidArgument(f"{out} does not end in .gguf")
    if not out.parent.is_dir():
        raise NotFound(f"{out.parent} does not exist (the folder for {out.name})")
    if out.is_dir():
        raise InvalidArgument(f"{out} is a directory")
    if out.exists() and not force:
        raise InvalidArgument(f"{out} exists: pass --force to overwrite it")


def _convert(args: argparse.Namespace) -> int:
    checkpoint = inspect_checkpoint(args.hf_dir)
    out: Path = args.out.absolute()
    _check_out(out, args.force)
    missing = missing_modules(args.python)
    if missing:
        raise FailedPrecondition(
            f"the converter needs {', '.join(missing)}, which {args.python} lacks: {EXTRA_HINT}"
        )
    version = llama_cpp_version()
    converter = ensure_converter(version, args.cache_dir or default_cache_dir(), sdist=args.sdist)
    known = known_architectures(converter)
    if known and checkpoint.architecture not in known:
        raise InvalidArgument(
            f"{checkpoint.architecture} is not an architecture llama.cpp's converter knows (in "
            f"llama-cpp-python {version}; it knows {len(known)}, e.g. LlamaForCausalLM)"
        )
    partial = out.with_name(out.name + ".part")
    command = converter_command(args.python, converter, checkpoint, partial, args.outtype)
    tail: collections.deque[str] = collections.deque(maxlen=25)
    started = time.monotonic()
    try:
        title = f"converting {checkpoint.path.name} ({checkpoint.architecture})"
        with _progress(title) as (show, echoed):

            def on_line(line: str) -> None:
                tail.append(line)
                show(line)

            code = run_converter(command, converter_env(dict(os.environ)), on_line)
        if code != 0:
            if not echoed:  # a spinner showed one line at a time: show the end in full
                sys.stderr.write("\n".join(tail) + "\n")
            raise FailedPrecondition(
                f"llama.cpp's converter failed (exit {code}) on {checkpoint.path}; its last "
                "lines are above"
            )
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)
    _report(args, checkpoint, out, version, time.monotonic() - started)
    return 0


def next_steps(out: Path) -> list[str]:
    """The commands that take a converted file on to a served quant."""
    quant = out.with_name(f"{out.stem}-Q4_K_M.gguf")
    return [
        f"llamaherd models quantize {out} {quant} --type Q4_K_M",
        f"llamaherd models add {quant}",
    ]


def _report(
    args: argparse.Namespace, checkpoint: Checkpoint, out: Path, version: str, seconds: float
) -> None:
    from common.gguf import read_gguf
    from common.memory import format_bytes

    gguf = read_gguf(out)
    steps = next_steps(out)
    summary: dict[str, object] = {
        "output": str(out), "bytes": gguf.file_bytes, "outtype": args.outtype,
        "hf_architecture": checkpoint.architecture, "gguf_architecture": gguf.architecture,
        "tensors": len(gguf.tensors), "llama_cpp_python": version,
        "seconds": round(seconds, 2), "next": steps,
    }  # fmt: skip
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(
        f"wrote {out} ({format_bytes(gguf.file_bytes)}, {args.outtype}, {gguf.architecture}, "
        f"{len(gguf.tensors)} tensors) in {seconds:.1f} s"
    )
    print("next:\n" + "\n".join(f"  {step}" for step in steps))


@contextlib.contextmanager
def _progress(what: str) -> Iterator[tuple[Callable[[str], None], bool]]:
    """On a terminal: a spinner with the elapsed time and the converter's latest line.
    Elsewhere (CI, a pipe): the converter's lines as they come, on stderr."""
    try:
        from rich.console import Console
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    except ImportError:
        console = None
    else:
        console = Console(stderr=True)
    if console is None or not console.is_terminal:

        def echo(line: str) -> None:
            print(line, file=sys.stderr, flush=True)

        yield echo, True
        return
    width = max(20, console.width - 40)
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
        TextColumn("[dim]{task.fields[line]}"), console=console, transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task(what, line="loading torch and transformers")

        def update(line: str) -> None:
            bar.update(task, line=line.strip()[:width])

        yield update, False
