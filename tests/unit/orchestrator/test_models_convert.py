"""`llamaherd models convert` before and around the converter: the checkpoint checks, the
converter's files unpacked from an sdist into the cache, its output streamed, and every
refusal as one line. The conversion itself (torch, transformers) is in
tests/integration/orchestrator/test_models_convert.py."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from common.errors import FailedPrecondition, InvalidArgument, NotFound
from orchestrator.cli import main
from orchestrator.models_convert import (
    EXTRA_HINT,
    converter_env,
    ensure_converter,
    inspect_checkpoint,
    known_architectures,
    next_steps,
    run_converter,
    unpack_converter,
)

VERSION = "9.9.9"
PREFIX = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/"
LLAMA_MODULE = """
@ModelBase.register(
    "LLaMAForCausalLM",
    "LlamaForCausalLM",
)
class LlamaModel(TextModel):
    pass

@ModelBase.register("ArceeForCausalLM")
class ArceeModel(LlamaModel):
    pass
"""


def _checkpoint(folder: Path, **overrides: object) -> Path:
    """A checkpoint folder as save_pretrained leaves it (the weights need only exist here)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **overrides}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes(b"\0" * 64)
    (folder / "tokenizer.model").write_bytes(b"\0" * 16)
    return folder


def _sdist(path: Path, version: str = VERSION, parts: tuple[str, ...] | None = None) -> Path:
    """A source archive shaped like llama-cpp-python's, with extra members the converter
    does not need (and one that tries to climb out)."""
    files = {
        "convert_hf_to_gguf.py": "print('converter')\n",
        "conversion/__init__.py": "",
        "conversion/llama.py": LLAMA_MODULE,
        "gguf-py/gguf/__init__.py": "",
        "LICENSE": "MIT\n",
        "src/llama.cpp": "// not needed\n",
        "conversion/../../../../evil.py": "raise SystemExit\n",
    }
    prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            if parts is not None and name.split("/", 1)[0] not in parts:
                continue
            data = text.encode()
            info = tarfile.TarInfo(prefix + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo(prefix + "conversion/link.py")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    return path


# --- the checkpoint --------------------------------------------------------------------


def test_a_saved_checkpoint_passes_with_its_architecture_and_weights(tmp_path: Path) -> None:
    folder = _checkpoint(tmp_path / "tiny")
    checkpoint = inspect_checkpoint(folder)
    assert checkpoint.architecture == "LlamaForCausalLM"
    assert checkpoint.weights == (folder / "model.safetensors",)
    assert checkpoint.weight_bytes == 64


def test_sharded_weights_are_read_from_their_index(tmp_path: Path) -> None:
    folder = _checkpoint(tmp_path / "sharded")
    (folder / "model.safetensors").unlink()
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    weight_map = {"a.weight": shards[0], "b.weight": shards[1], "c.weight": shards[1]}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (folder / shards[0]).write_bytes(b"\0")
    with pytest.raises(InvalidArgument) as missing:
        inspect_checkpoint(folder)
    assert missing.value.message == (
        f"model.safetensors.index.json names 2 shard(s) but 1 are missing from {folder}: "
        f"{shards[1]}"
    )
    (folder / shards[1]).write_bytes(b"\0")
    assert [p.name for p in inspect_checkpoint(folder).weights] == shards


def test_pytorch_bin_weights_count_too(tmp_path: Path) -> None:
    folder = _checkpoint(tmp_path / "bin")
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"\0")
    assert [p.name for p in inspect_checkpoint(folder).weights] == ["pytorch_model.bin"]


@pytest.mark.parametrize(
    ("spoil", "error", "message"),
    [
        (lambda d: (d / "config.json").unlink(), InvalidArgument,
         "{d} has no config.json: it is not a Hugging Face checkpoint folder"),
        (lambda d: (d / "config.json").write_text("{nope"), InvalidArgument,
         "{d}/config.json is not valid JSON: Expecting property name enclosed in double "
         "quotes: line 1 column 2 (char 1)"),
        (lambda d: (d / "config.json").write_text('{"model_type": "llama"}'), InvalidArgument,
         '{d}/config.json names no architecture ("architectures": ["...ForCausalLM"] is '
         "missing or empty)"),
        (lambda d: (d / "config.json").write_text('{"architectures": []}'), InvalidArgument,
         '{d}/config.json names no architecture ("architectures": ["...ForCausalLM"] is '
         "missing or empty)"),
        (lambda d: (d / "model.safetensors").unlink(), InvalidArgument,
         "{d} has no weights (model*.safetensors or pytorch_model*.bin)"),
        (lambda d: (d / "tokenizer.model").unlink(), InvalidArgument,
         "{d} has no tokenizer (tokenizer.model, tokenizer.json, tekken.json): save the "
         "tokenizer with the model (tokenizer.save_pretrained)"),
    ],
)  # fmt: skip
def test_a_folder_that_is_not_a_checkpoint_is_refused_naming_what_lacks(
    tmp_path: Path, spoil, error: type[Exception], message: str
) -> None:
    folder = _checkpoint(tmp_path / "ckpt")
    spoil(folder)
    with pytest.raises(error) as refused:
        inspect_checkpoint(folder)
    assert refused.value.message == message.format(d=folder)  # type: ignore[attr-defined]


def test_a_missing_folder_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="does not exist: pass the folder"):
        inspect_checkpoint(tmp_path / "absent")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotFound, match="is not a directory"):
        inspect_checkpoint(tmp_path / "file")


# --- the converter's files -------------------------------------------------------------


def test_only_the_converter_parts_are_unpacked_from_the_sdist(tmp_path: Path) -> None:
    dest = tmp_path / "converter"
    unpack_converter(_sdist(tmp_path / "sdist.tar.gz"), VERSION, dest)
    unpacked = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert unpacked == [
        "LICENSE", "conversion/__init__.py", "conversion/llama.py", "convert_hf_to_gguf.py",
        "gguf-py/gguf/__init__.py",
    ]  # fmt: skip
    assert not (tmp_path / "evil.py").exists()
    assert known_architectures(dest) == {"LLaMAForCausalLM", "LlamaForCausalLM", "ArceeForCausalLM"}


def test_an_sdist_of_another_version_or_without_the_converter_is_refused(tmp_path: Path) -> None:
    other = _sdist(tmp_path / "other.tar.gz", version="0.0.1")
    with pytest.raises(FailedPrecondition) as wrong:
        unpack_converter(other, VERSION, tmp_path / "a")
    assert wrong.value.message == (
        f"other.tar.gz is not the llama-cpp-python {VERSION} source: it lacks "
        f"{PREFIX}convert_hf_to_gguf.py"
    )
    partial = _sdist(tmp_path / "partial.tar.gz", parts=("convert_hf_to_gguf.py", "LICENSE"))
    with pytest.raises(FailedPrecondition, match=r"it lacks .*/conversion$"):
        unpack_converter(partial, VERSION, tmp_path / "b")
    (tmp_path / "junk.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(FailedPrecondition, match=r"cannot read .*junk\.tar\.gz"):
        unpack_converter(tmp_path / "junk.tar.gz", VERSION, tmp_path / "c")


def test_the_converter_is_downloaded_once_then_taken_from_the_cache(tmp_path: Path) -> None:
    downloads: list[str] = []

    def download(version: str, dest: Path) -> Path:  # stands in for pip, the boundary
        downloads.append(version)
        return _sdist(dest / f"llama_cpp_python-{version}.tar.gz", version=version)

    cache = tmp_path / "cache"
    first = ensure_converter(VERSION, cache, download)
    again = ensure_converter(VERSION, cache, download)
    assert first == again == cache / f"llama-cpp-python-{VERSION}"
    assert (first / "convert_hf_to_gguf.py").is_file()
    assert downloads == [VERSION]
    # Nothing of the unpacking is left beside the converter.
    assert [p.name for p in cache.iterdir()] == [first.name]


def test_a_given_sdist_is_used_without_downloading(tmp_path: Path) -> None:
    def no_download(version: str, dest: Path) -> Path:
        raise AssertionError("downloaded although --sdist was given")

    sdist = _sdist(tmp_path / "llama_cpp_python-9.9.9.tar.gz")
    found = ensure_converter(VERSION, tmp_path / "cache", no_download, sdist=sdist)
    assert (found / "conversion" / "llama.py").is_file()


# --- running it ------------------------------------------------------------------------


def test_the_converter_output_is_streamed_line_by_line_progress_updates_too() -> None:
    script = (
        "import sys; print('INFO:hf-to-gguf:Loading model'); "
        "sys.stderr.write('Writing:  50%\\rWriting: 100%\\n'); print('tail', end=''); "
        "sys.exit(3)"
    )
    lines: list[str] = []
    code = run_converter([sys.executable, "-c", script], converter_env({}), lines.append)
    assert code == 3
    assert sorted(lines) == sorted(
        ["INFO:hf-to-gguf:Loading model", "Writing:  50%", "Writing: 100%", "tail"]
    )


def test_the_converter_uses_the_gguf_py_it_ships_and_not_the_hub() -> None:
    env = converter_env({"NO_LOCAL_GGUF": "1", "HOME": "/root"})
    assert env == {"HOME": "/root", "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    # Whoever wants the hub says so.
    assert converter_env({"HF_HUB_OFFLINE": "0"})["HF_HUB_OFFLINE"] == "0"


def test_next_steps_quantize_then_add_to_the_store() -> None:
    assert next_steps(Path("/m/tiny-f16.gguf")) == [
        "llamaherd models quantize /m/tiny-f16.gguf /m/tiny-f16-Q4_K_M.gguf --type Q4_K_M",
        "llamaherd models add /m/tiny-f16-Q4_K_M.gguf",
    ]


# --- the command's refusals ------------------------------------------------------------


def _convert(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["models", "convert", *args])
    return code, capsys.readouterr().err.strip()


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    folder = _checkpoint(tmp_path / "tiny")
    code, err = _convert(capsys, str(tmp_path / "nowhere"), str(tmp_path / "out.gguf"))
    assert (code, err) == (
        2, f"llamaherd models convert: {tmp_path / 'nowhere'} does not exist: pass the folder "
        "of a Hugging Face checkpoint",
    )  # fmt: skip
    code, err = _convert(capsys, str(folder), str(tmp_path / "out.bin"))
    assert (code, err) == (
        2,
        f"llamaherd models convert: {tmp_path / 'out.bin'} does not end in .gguf",
    )
    code, err = _convert(capsys, str(folder), str(tmp_path / "no" / "out.gguf"))
    assert (code, err) == (
        2, f"llamaherd models convert: {tmp_path / 'no'} does not exist (the folder for out.gguf)"
    )  # fmt: skip
    with pytest.raises(SystemExit) as usage:
        main(["models", "convert", str(folder), str(tmp_path / "o.gguf"), "--outtype", "q4_k_m"])
    assert usage.value.code == 2
    assert "invalid choice: 'q4_k_m'" in capsys.readouterr().err


def test_a_python_without_the_extra_names_the_install(tmp_path: Path, capsys) -> None:
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    folder = _checkpoint(tmp_path / "tiny")
    out = tmp_path / "out.gguf"
    code, err = _convert(capsys, str(folder), str(out), "--python", str(bare / "bin" / "python"))
    assert code == 1
    assert err == (
        "llamaherd models convert: the converter needs torch, transformers, sentencepiece, "
        f"safetensors, numpy, yaml, which {bare / 'bin' / 'python'} lacks: {EXTRA_HINT}"
    )
    assert not out.exists()
