"""Worker settings: the layering of defaults, file, environment and flags, and the refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.errors import InvalidArgument
from common.model_settings import ModelConfig
from common.net import join_host_port, split_host_port
from common.settings import ConfigError
from worker.config import build_settings, parse_model_config


def _write(tmp_path, text: str, name: str = "worker.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_listen_on_loopback_with_no_models():
    settings = build_settings(environ={})
    assert (settings.host, settings.port) == ("127.0.0.1", 50051)
    assert settings.models == () and settings.coordinator is None


def test_layers_file_then_environment_then_flags(tmp_path):
    path = _write(tmp_path, "port: 6000\nlog_level: debug\nshutdown_grace_s: 2\n")
    environ = {"LLAMAHERD_PORT": "7000", "LLAMAHERD_SHUTDOWN_GRACE_S": "3"}
    settings = build_settings(path, environ=environ, overrides={"port": 8000, "host": None})
    assert settings.port == 8000  # flag beats environment beats file
    assert settings.shutdown_grace_s == 3.0  # environment beats file
    assert settings.log_level == "DEBUG"  # from the file, normalised
    assert settings.host == "127.0.0.1"  # a flag left unset does not override


def test_model_paths_are_taken_from_the_config_files_folder(tmp_path):
    path = _write(
        tmp_path,
        "models:\n"
        "  - {alias: rel, path: models/a.gguf}\n"
        "  - {alias: abs, path: /srv/b.gguf}\n"
        "  - {alias: emb, path: 'builtin:gemma-3-270m', embedding: true}\n",
    )
    rel, absolute, builtin = build_settings(path, environ={}).models
    assert rel.path == str(tmp_path / "models" / "a.gguf")
    assert absolute.path == "/srv/b.gguf"
    assert builtin.is_builtin and builtin.embedding


def test_json_config_files_are_read_too(tmp_path):
    path = _write(tmp_path, json.dumps({"port": 0, "labels": ["jetson", "gpu"]}), "w.json")
    settings = build_settings(path, environ={})
    assert settings.port == 0 and settings.labels == ("gpu", "jetson")


def test_memory_sizes_accept_units(tmp_path):
    path = _write(tmp_path, "memory_reserve: 1GiB\nmemory_limit: 6GB\n")
    settings = build_settings(path, environ={})
    assert settings.memory_reserve == 1024**3
    assert settings.memory_limit == 6 * 1000**3


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("port: 70000\n", "port"),
        ("prot: 1\n", "prot"),
        ("log_level: loud\n", "log_level"),
        ("coordinator: nohost\n", "coordinator"),
        ("labels: ['bad label']\n", "labels"),
        ("models: [{alias: a, path: x.gguf, n_ctx: -1}]\n", "models.0.n_ctx"),
        ("models: [{alias: a, path: x.gguf, n_gpu_layer: 3}]\n", "models.0.n_gpu_layer"),
        ("models: [{alias: a, path: x.gguf}, {alias: a, path: y.gguf}]\n", "alias 'a'"),
        ("models: [{alias: 'no spaces', path: x.gguf}]\n", "models.0.alias"),
    ],
)
def test_invalid_settings_name_the_field_and_the_file(tmp_path, text, names):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        build_settings(path, environ={})
    message = str(info.value)
    assert names in message and str(path) in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("port: [1\n", "not valid YAML/JSON"),
        ("- port\n", "mapping of settings"),
    ],
)
def test_unreadable_config_files_say_why(tmp_path, text, expected):
    with pytest.raises(ConfigError, match=expected):
        build_settings(_write(tmp_path, text), environ={})


def test_missing_config_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        build_settings(tmp_path / "absent.yaml", environ={})


def test_empty_config_file_means_defaults(tmp_path):
    assert build_settings(_write(tmp_path, ""), environ={}).port == 50051


def test_environment_values_are_validated_like_the_file():
    with pytest.raises(ConfigError, match="port"):
        build_settings(environ={"LLAMAHERD_PORT": "eighty"})


def test_settings_are_frozen():
    settings = build_settings(environ={})
    with pytest.raises(ValueError, match="frozen"):
        settings.port = 1  # type: ignore[misc]


def test_model_config_defaults_and_derived_values():
    model = ModelConfig(alias="m", path="/m.gguf", n_threads=3)
    assert model.n_ctx == 4096 and model.threads_batch == 3 and not model.is_builtin
    assert ModelConfig(alias="m", path="/m.gguf", n_threads_batch=5).threads_batch == 5


def test_each_slot_needs_room_for_a_token_in_the_batch():
    with pytest.raises(ValueError, match=r"n_parallel \(8\) cannot exceed n_batch \(4\)"):
        ModelConfig(alias="m", path="/m.gguf", n_parallel=8, n_batch=4)
    assert ModelConfig(alias="m", path="/m.gguf", n_parallel=4, n_batch=4).n_parallel == 4


@pytest.mark.parametrize(
    ("fields", "message"),
    [({"rpc_servers": ["nohost"]}, "rpc_servers entry: 'nohost' is not HOST:PORT"),
     ({"rpc_servers": ["10.0.0.2:5", "10.0.0.2:5"]}, "lists a server twice"),
     ({"rpc_servers": [f"10.0.0.2:{p}" for p in range(1, 18)]}, "at most 16"),
     ({"tensor_split": [1.0, -1.0]}, "finite and not negative"),
     ({"tensor_split": [0.0, 0.0]}, "some device a positive share")],
)  # fmt: skip
def test_split_settings_are_checked(fields, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(alias="m", path="/m.gguf", **fields)


def test_a_model_with_rpc_servers_is_split():
    split = ModelConfig(alias="m", path="/m.gguf", rpc_servers=("[fd00::2]:50052",))
    assert split.is_split and not ModelConfig(alias="m", path="/m.gguf").is_split


@pytest.mark.parametrize(
    ("fields", "remote"),
    [({}, 0),
     ({"rpc_servers": ("a:1",), "n_gpu_layers": 9}, 9),
     ({"rpc_servers": ("a:1",), "n_gpu_layers": -1}, 18),
     ({"rpc_servers": ("a:1",), "n_gpu_layers": 40}, 18),
     ({"rpc_servers": ("a:1", "b:1"), "n_gpu_layers": 12, "tensor_split": (6, 6)}, 12),
     # a local GPU after the RPC server takes its share of the offloaded layers
     ({"rpc_servers": ("a:1",), "n_gpu_layers": 18, "tensor_split": (1, 2)}, 6)],
)  # fmt: skip
def test_layers_on_rpc_follow_llama_cpps_split(fields, remote):
    assert ModelConfig(alias="m", path="/m.gguf", **fields).layers_on_rpc(18) == remote


def test_load_requests_are_refused_with_every_bad_field_named():
    with pytest.raises(InvalidArgument) as info:
        parse_model_config({"alias": "", "path": "/m.gguf", "n_batch": 0, "extra": 1})
    message = str(info.value)
    assert message.startswith("invalid model spec:")
    for field in ("alias", "n_batch", "extra"):
        assert field in message


@pytest.mark.parametrize(
    ("address", "parts"),
    [("127.0.0.1:50051", ("127.0.0.1", 50051)), ("[::1]:8000", ("::1", 8000)),
     ("node-3.lan:1", ("node-3.lan", 1))],
)  # fmt: skip
def test_host_port_round_trips(address, parts):
    assert split_host_port(address) == parts
    assert join_host_port(*parts) == address


@pytest.mark.parametrize("address", ["", "host", ":80", "host:", "host:0", "host:65536", "h:x"])
def test_bad_host_port_is_refused(address):
    with pytest.raises(ValueError, match="is not HOST:PORT"):
        split_host_port(address)


def test_the_default_model_dir_is_expanded() -> None:
    # Unexpanded, "~/..." matched no real path, so LoadModel refused files inside it.
    (directory,) = build_settings(environ={}).model_dirs
    assert directory.is_absolute() and "~" not in str(directory)
    assert directory == Path("~/.cache/llamaherd/models").expanduser().resolve()
