"""The `llamaherd` command. Each subcommand imports only what it needs, so a worker node
runs `llamaherd worker` without the control plane's dependencies."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from common.settings import ConfigError
from orchestrator.launch import add_coordinator_parser, add_up_parser
from worker.cli import add_model_tool_parsers, add_worker_parser

if TYPE_CHECKING:
    import grpc
    from llamaherd.v1 import generation_pb2 as gen_pb
    from pydantic import SecretStr

    from common.cluster_secrets import TlsFiles
    from orchestrator.client import GatewayClient
    from orchestrator.config import CoordinatorSettings
    from orchestrator.store.index import StoredModel, StoreIndex
    from orchestrator.store.ingest import Progress
    from worker.api.client import WorkerClient

DEFAULT_GATEWAY = "127.0.0.1:8001"

DEFAULT_WORKER = "127.0.0.1:50051"

API_KEY_ENV = "LLAMAHERD_API_KEY"
API_KEY_FIX = f"set {API_KEY_ENV} or pass --api-key"


def _add_api_key_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--api-key", metavar="KEY",
        help=f"the cluster's API key, for a gateway that requires one (default: ${API_KEY_ENV}; "
        "the variable is the better place, as a key on the command line shows in ps and in "
        "shell history)",
    )  # fmt: skip


def _api_key(args: argparse.Namespace) -> str | None:
    key: str | None = args.api_key or os.environ.get(API_KEY_ENV)
    return key or None


def _add_cluster_token_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cluster-token-file", type=Path, metavar="PATH",
        help="file holding the cluster's join token, for a worker that requires it (default: "
        "$LLAMAHERD_CLUSTER_TOKEN)",
    )  # fmt: skip
    from common.cluster_secrets import refuse_token_flag

    refuse_token_flag(parser)


def _add_tls_arguments(parser: argparse.ArgumentParser) -> None:
    for name, what in (("ca", "the cluster CA's certificate"), ("cert", "this client's "
                       "certificate"), ("key", "this client's key")):  # fmt: skip
        parser.add_argument(
            f"--tls-{name}", type=Path, metavar="PATH",
            help=f"mutual TLS, for a worker that uses it: {what} (llamaherd certs)",
        )  # fmt: skip


def _cluster_token(args: argparse.Namespace) -> SecretStr | None:
    """The join token from LLAMAHERD_CLUSTER_TOKEN, else --cluster-token-file; None without."""
    from pydantic import SecretStr

    from common.cluster_secrets import TOKEN_ENV, resolve_token

    raw = os.environ.get(TOKEN_ENV)
    return resolve_token(SecretStr(raw) if raw else None, args.cluster_token_file)


def _tls(args: argparse.Namespace) -> TlsFiles | None:
    from common.cluster_secrets import TlsFiles

    return TlsFiles.load(args.tls_ca, args.tls_cert, args.tls_key)


def _worker_failure(command: str, exc: grpc.RpcError, worker: str) -> str:
    """The lines to print for a failed worker call: what happened and what to do next."""
    import grpc

    from common.cluster_secrets import JOIN_HINT

    if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
        return f"llamaherd {command}: the worker at {worker} requires the join token: {JOIN_HINT}"
    line = f"llamaherd {command}: {exc.code().name}: {exc.details()}"
    if exc.code() == grpc.StatusCode.UNAVAILABLE:
        line += f"\nis a worker running at {worker}? start one with `make run`"
    return line


def _gateway_failure(command: str, exc: grpc.RpcError, gateway: str, sent_key: bool) -> str:
    """The lines to print for a failed gateway call: what happened and what to do next."""
    import grpc

    if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
        # One line, and never the key itself.
        if not sent_key:
            return (
                f"llamaherd {command}: the gateway at {gateway} requires an API key: {API_KEY_FIX}"
            )
        return (
            f"llamaherd {command}: the gateway at {gateway} refused the API key "
            f"({exc.details()}): {API_KEY_FIX} with the cluster's key"
        )
    line = f"llamaherd {command}: {exc.code().name}: {exc.details()}"
    if exc.code() == grpc.StatusCode.UNAVAILABLE:
        line += (
            f"\nis a gateway running at {gateway}? start a cluster with `make run` (llamaherd up)"
        )
    return line


def _add_generate_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "generate",
        help="stream a completion from a worker",
        description="Stream a completion (or, with --chat, a chat reply) from a worker.",
    )
    parser.add_argument("prompt", help="the prompt (with --chat: the user message)")
    parser.add_argument(
        "--worker", default=DEFAULT_WORKER, help=f"worker address (default: {DEFAULT_WORKER})"
    )
    parser.add_argument("--model", help="model alias (default: the worker's first ready model)")
    parser.add_argument("--chat", action="store_true", help="send the prompt as a chat message")
    parser.add_argument("--max-tokens", type=int, default=128, help="default: 128")
    parser.add_argument("--temperature", type=float, help="0 = greedy (default: the worker's, 0.8)")
    parser.add_argument("--seed", type=int, help="fixed seed for reproducible sampling")
    _add_cluster_token_argument(parser)
    _add_tls_arguments(parser)
    parser.set_defaults(run=_run_generate)


def _add_models_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "models", help="the cluster's model store (add, import, list, show, rm), or without an "
        "action the models a worker hosts",
        description="Without an action: the models a worker hosts (--worker). With one: the "
        "coordinator's model store, acted on directly in its directory (--store-dir, else "
        "store_dir from --config or LLAMAHERD_COORDINATOR_STORE_DIR), so these work with or "
        "without a coordinator running.",
    )  # fmt: skip
    parser.add_argument(
        "--worker", default=DEFAULT_WORKER, help=f"worker address (default: {DEFAULT_WORKER})"
    )
    _add_cluster_token_argument(parser)
    _add_tls_arguments(parser)
    parser.set_defaults(run=_run_models)
    actions = parser.add_subparsers(title="store actions", metavar="ACTION", dest="store_action")
    add = actions.add_parser(
        "add", help="add a local GGUF file to the store",
        description="Check a GGUF file, hash it (once, with progress) and add it to the store, "
        "hard-linked when it lies on the store's filesystem, else copied.",
    )  # fmt: skip
    add.add_argument("file", type=Path, help="the GGUF file")
    add.add_argument("--name", help="the store name (default: the file name less .gguf)")
    add.add_argument("--replace", action="store_true", help="point an existing name at this file")
    add.add_argument(
        "--copy", action="store_true",
        help="copy even on the same filesystem (a hard link shares the file with its source)",
    )  # fmt: skip
    imp = actions.add_parser(
        "import", help="download a GGUF file into the store from an HTTP(S) mirror",
        description="Download a GGUF from an http(s) URL on the cluster network (hosts limited "
        "by store_import_hosts), hashing it as it arrives; redirects are not followed.",
    )  # fmt: skip
    imp.add_argument("url", help="http:// or https:// URL of the file")
    imp.add_argument("--name", help="the store name (default: the URL's file name less .gguf)")
    imp.add_argument("--sha256", metavar="HEX", help="refuse the file unless it has this hash")
    imp.add_argument("--replace", action="store_true", help="point an existing name at this file")
    imp.add_argument(
        "--max-bytes", type=int, metavar="N",
        help="refuse a file larger than this (default: 512 GiB)",
    )  # fmt: skip
    listing = actions.add_parser("list", help="the models in the store")
    show = actions.add_parser("show", help="one model of the store: hash, size, GGUF summary")
    show.add_argument("name", help="the store name")
    for each in (add, imp, listing, show):
        each.add_argument("--json", action="store_true", help="print JSON, for scripts")
    remove = actions.add_parser("rm", help="remove a name (and its file, if no other name uses it)")
    remove.add_argument("name", help="the store name")
    for each in (add, imp, listing, show, remove):
        each.add_argument(
            "--store-dir", type=Path, metavar="DIR",
            help="the store directory (default: the coordinator's store_dir setting)",
        )  # fmt: skip
        each.add_argument(
            "--config", type=Path, metavar="PATH",
            help="the coordinator's config file, for its store_dir and store_import_hosts",
        )  # fmt: skip
        each.set_defaults(run=_run_store)
    # Quantize and perplexity act on local files with llama.cpp: the worker's tools.
    add_model_tool_parsers(actions)
    # Convert runs llama.cpp's converter from the installed llama-cpp-python's source.
    from orchestrator.models_convert import add_convert_parser

    add_convert_parser(actions)


def _run_generate(args: argparse.Namespace) -> int:
    import grpc
    from llamaherd.v1 import generation_pb2 as gen_pb

    from worker.api.client import WorkerClient

    sampling = gen_pb.SamplingParams(
        max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed
    )
    try:
        token, tls = _cluster_token(args), _tls(args)
    except ConfigError as exc:
        print(f"llamaherd generate: {exc}", file=sys.stderr)
        return 2
    with WorkerClient(args.worker, token=token, tls=tls) as client:
        try:
            model = args.model or _first_ready_model(client)
            chunks = (
                client.chat(model, [("user", args.prompt)], sampling)
                if args.chat
                else client.generate(model, args.prompt, sampling)
            )
            for chunk in chunks:
                sys.stdout.write(chunk.text)
                sys.stdout.flush()
                if chunk.finish_reason:
                    _print_summary(chunk)
        except grpc.RpcError as exc:
            print("\n" + _worker_failure("generate", exc, args.worker), file=sys.stderr)
            return 1
    return 0


def _print_summary(chunk: gen_pb.GenerationChunk) -> None:
    from llamaherd.v1 import generation_pb2 as gen_pb

    t = chunk.timings
    reason = gen_pb.FinishReason.Name(chunk.finish_reason)
    print(
        f"\n[{chunk.usage.completion_tokens} tokens, "
        f"{reason.removeprefix('FINISH_REASON_').lower()}, "
        f"first token {t.time_to_first_token_ms:.0f} ms, "
        f"{t.decode_tokens_per_second:.1f} tokens/s]",
        file=sys.stderr,
    )


def _first_ready_model(client: WorkerClient) -> str:
    from llamaherd.v1 import worker_pb2 as pb

    for info in client.list_models():
        if info.state == pb.MODEL_STATE_READY:
            return str(info.alias)
    raise SystemExit("llamaherd generate: the worker has no ready model; pass --model")


def _run_models(args: argparse.Namespace) -> int:
    import grpc
    from llamaherd.v1 import worker_pb2 as pb

    from worker.api.client import WorkerClient

    try:
        token, tls = _cluster_token(args), _tls(args)
    except ConfigError as exc:
        print(f"llamaherd models: {exc}", file=sys.stderr)
        return 2
    with WorkerClient(args.worker, timeout=10, token=token, tls=tls) as client:
        try:
            models = client.list_models()
        except grpc.RpcError as exc:
            print(_worker_failure("models", exc, args.worker), file=sys.stderr)
            return 1
    print(f"{'ALIAS':24} {'STATE':10} {'ARCH':10} {'N_CTX':>6} {'QUEUED':>6}  PATH / ERROR")
    for m in models:
        state = pb.ModelState.Name(m.state).removeprefix("MODEL_STATE_").lower()
        detail = m.error or m.spec.path
        row = f"{m.alias:24} {state:10} {m.architecture:10} {m.spec.n_ctx:>6}"
        print(f"{row} {m.queued_requests:>6}  {detail}")
    return 0


def _store_settings(args: argparse.Namespace) -> CoordinatorSettings:
    """The coordinator's settings as far as the store needs them: --config, the
    environment's LLAMAHERD_COORDINATOR_*, then --store-dir."""
    from orchestrator.config import build_coordinator_settings

    overrides = {"store_dir": args.store_dir} if args.store_dir is not None else {}
    return build_coordinator_settings(args.config, overrides=overrides)


def _run_store(args: argparse.Namespace) -> int:
    """`llamaherd models add|import|list|show|rm`: one line on failure, exit 1 (2 for a
    bad setting)."""
    from common.errors import LlamaherdError

    command = f"models {args.store_action}"
    try:
        settings = _store_settings(args)
        return _STORE_ACTIONS[args.store_action](args, settings)
    except ConfigError as exc:
        print(f"llamaherd {command}: {exc}", file=sys.stderr)
        return 2
    except LlamaherdError as exc:
        print(f"llamaherd {command}: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"llamaherd {command}: interrupted; nothing was added", file=sys.stderr)
        return 130


def _open_store(settings: CoordinatorSettings, create: bool = True) -> StoreIndex:
    from orchestrator.store.index import StoreIndex

    return StoreIndex(settings.store_dir, create=create)


def _store_add(args: argparse.Namespace, settings: CoordinatorSettings) -> int:
    from orchestrator.store.ingest import add_file

    with _open_store(settings) as index, _progress_bar(f"hashing {args.file.name}") as progress:
        model = add_file(
            index, args.file, args.name, replace=args.replace, link=not args.copy,
            progress=progress,
        )  # fmt: skip
    _print_added(model, settings, args.json)
    return 0


def _store_import(args: argparse.Namespace, settings: CoordinatorSettings) -> int:
    from orchestrator.store.ingest import DEFAULT_MAX_IMPORT_BYTES, import_url

    max_bytes = args.max_bytes if args.max_bytes is not None else DEFAULT_MAX_IMPORT_BYTES
    with _open_store(settings) as index, _progress_bar("downloading") as progress:
        model = import_url(
            index, args.url, args.name, sha256=args.sha256, replace=args.replace,
            allowed_hosts=settings.store_import_hosts, max_bytes=max_bytes, progress=progress,
        )  # fmt: skip
    _print_added(model, settings, args.json)
    return 0


def _print_added(model: StoredModel, settings: CoordinatorSettings, as_json: bool) -> None:
    import json

    from common.memory import format_bytes

    if as_json:
        print(json.dumps(model.to_json(), indent=2))
        return
    s = model.summary
    print(
        f"added {model.name} to the store at {settings.store_dir}: sha256 {model.sha256}, "
        f"{format_bytes(model.size_bytes)}, {s.architecture or '?'} {s.quantization or '?'}, "
        f"{s.n_layers} layers"
    )


def _store_list(args: argparse.Namespace, settings: CoordinatorSettings) -> int:
    import json

    from common.errors import FailedPrecondition
    from common.memory import format_bytes

    try:
        with _open_store(settings, create=False) as index:
            models = index.list()
    except FailedPrecondition:  # no store yet: nothing in it
        models = ()
    if args.json:
        print(json.dumps({"models": [m.to_json() for m in models]}, indent=2))
        return 0
    if not models:
        print(f"the store at {settings.store_dir} is empty: llamaherd models add FILE")
        return 0
    print(f"{'NAME':32} {'SIZE':>10} {'ARCH':10} {'QUANT':8} {'PARAMS':>7} {'LAYERS':>6}  SHA256")
    for m in models:
        s = m.summary
        print(
            f"{m.name:32} {format_bytes(m.size_bytes):>10} {s.architecture:10} "
            f"{s.quantization:8} {_billions(s.parameters):>7} {s.n_layers:>6}  {m.sha256[:12]}"
        )
    return 0


def _billions(parameters: int) -> str:
    return f"{parameters / 1e9:.2f}B" if parameters >= 1e8 else f"{parameters / 1e6:.1f}M"


def _store_show(args: argparse.Namespace, settings: CoordinatorSettings) -> int:
    import datetime
    import json

    from common.errors import FailedPrecondition, NotFound
    from common.memory import format_bytes

    try:
        with _open_store(settings, create=False) as index:
            model = index.get(args.name)
            path = index.file_path(model.sha256)
    except FailedPrecondition:
        raise NotFound(f"no model named {args.name!r}: the store at {settings.store_dir} "
                       "is empty") from None  # fmt: skip
    if args.json:
        print(json.dumps(model.to_json(), indent=2))
        return 0
    s = model.summary
    added = datetime.datetime.fromtimestamp(model.added_unix_s, datetime.timezone.utc)
    rows = (
        ("name", model.name), ("sha256", model.sha256),
        ("size", f"{format_bytes(model.size_bytes)} ({model.size_bytes} bytes)"),
        ("architecture", s.architecture), ("parameters", f"{s.parameters:,}"),
        ("quantization", s.quantization), ("layers", str(s.n_layers)),
        ("context length", str(s.context_length)),
        ("chat template", "yes" if s.has_chat_template else "no"),
        ("added", added.isoformat(timespec="seconds")), ("file", str(path)),
    )  # fmt: skip
    for key, value in rows:
        print(f"{key + ':':16}{value}")
    return 0


def _store_rm(args: argparse.Namespace, settings: CoordinatorSettings) -> int:
    from common.errors import FailedPrecondition, NotFound

    try:
        with _open_store(settings, create=False) as index:
            model = index.remove(args.name)
            kept = index.has_file(model.sha256)
    except FailedPrecondition:
        raise NotFound(f"no model named {args.name!r}: the store at {settings.store_dir} "
                       "is empty") from None  # fmt: skip
    fate = "kept (another name uses it)" if kept else "deleted"
    print(f"removed {model.name}; its file {model.sha256[:12]}… was {fate}")
    return 0


_STORE_ACTIONS = {
    "add": _store_add, "import": _store_import, "list": _store_list, "show": _store_show,
    "rm": _store_rm,
}  # fmt: skip


@contextlib.contextmanager
def _progress_bar(what: str) -> Iterator[Progress]:
    """A progress bar on stderr (bytes, rate, time left), when stderr is a terminal."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )
    from rich.progress import (
        Progress as Bar,
    )

    console = Console(stderr=True)
    bar = Bar(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
        TransferSpeedColumn(), TimeRemainingColumn(), console=console, transient=True,
        disable=not console.is_terminal,
    )  # fmt: skip
    task = bar.add_task(what, total=None)

    def advance(done: int, total: int | None) -> None:
        bar.update(task, completed=done, total=total)

    with bar:
        yield advance


def _add_status_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "status", help="nodes, models and load of a cluster, as its gateway sees them",
        description="Nodes, their models, load and telemetry, and models the catalog could "
        "not place, as a gateway sees them. --json prints the document /v1/cluster serves.",
    )  # fmt: skip
    parser.add_argument(
        "--gateway", default=DEFAULT_GATEWAY,
        help=f"a gateway's gRPC address (default: {DEFAULT_GATEWAY})",
    )  # fmt: skip
    _add_api_key_argument(parser)
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="the cluster as JSON, for scripts")
    output.add_argument(
        "--json-schema", action="store_true",
        help="print the JSON Schema of --json's document and exit (no gateway needed)",
    )  # fmt: skip
    parser.add_argument(
        "--target-streams", type=int, metavar="N",
        help="with measured capacities (llamaherd capacity): how many replicas each model "
        "needs for N concurrent streams",
    )  # fmt: skip
    parser.set_defaults(run=_run_status)


def _add_chat_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "chat",
        help="stream a chat reply through a cluster's gateway",
        description="Send one user message to a model of the cluster and stream the reply.",
    )
    parser.add_argument("prompt", help="the user message")
    parser.add_argument("--model", help="model alias (default: the cluster's first model)")
    parser.add_argument(
        "--gateway", default=DEFAULT_GATEWAY,
        help=f"a gateway's gRPC address (default: {DEFAULT_GATEWAY})",
    )  # fmt: skip
    _add_api_key_argument(parser)
    parser.add_argument("--system", help="a system message to send first")
    parser.add_argument("--max-tokens", type=int, default=256, help="default: 256")
    parser.add_argument("--temperature", type=float, help="0 = greedy (default: 0.8)")
    parser.add_argument("--seed", type=int, help="fixed seed for reproducible sampling")
    parser.set_defaults(run=_run_chat)


def _run_status(args: argparse.Namespace) -> int:
    import json

    import grpc

    from orchestrator.client import GatewayClient
    from orchestrator.cluster.reports import view_from_proto
    from orchestrator.cluster.view import json_schema, view_to_json
    from orchestrator.status_table import render_status

    if args.json_schema:
        print(json.dumps(json_schema(), indent=2))
        return 0
    if args.target_streams is not None and args.target_streams < 1:
        print(f"llamaherd status: --target-streams {args.target_streams}: must be at least 1",
              file=sys.stderr)  # fmt: skip
        return 2
    key = _api_key(args)
    with GatewayClient(args.gateway, timeout=10, api_key=key) as client:
        try:
            status = client.status()
        except grpc.RpcError as exc:
            print(_gateway_failure("status", exc, args.gateway, key is not None), file=sys.stderr)
            return 1
    view = view_from_proto(status)
    if args.json:
        print(json.dumps(view_to_json(view), indent=2))
    else:
        print(render_status(view, args.target_streams))
    return 0


def _run_chat(args: argparse.Namespace) -> int:
    import grpc
    from llamaherd.v1 import generation_pb2 as gen_pb

    from orchestrator.client import GatewayClient

    sampling = gen_pb.SamplingParams(
        max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed
    )
    messages = [("system", args.system)] if args.system else []
    messages.append(("user", args.prompt))
    key = _api_key(args)
    with GatewayClient(args.gateway, api_key=key) as client:
        try:
            model = args.model or _first_cluster_model(client)
            for chunk in client.chat(model, messages, sampling):
                sys.stdout.write(chunk.text)
                sys.stdout.flush()
                if chunk.finish_reason:
                    _print_summary(chunk)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                print(_gateway_failure("chat", exc, args.gateway, key is not None), file=sys.stderr)
            else:
                print(f"\nllamaherd chat: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    return 0


def _first_cluster_model(client: GatewayClient) -> str:
    for model in client.models():
        if not model.embedding:
            return str(model.alias)
    raise SystemExit("llamaherd chat: the cluster serves no chat model yet; pass --model")


def _add_certs_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "certs", help="a cluster CA and node certificates, for optional mutual TLS",
        description="Make the certificates for mutual TLS between workers, the coordinator "
        "and its gateways: `certs init` once (the CA; its key stays here), then `certs issue "
        "NODE` per worker (NODE = its node id) and once for `coordinator`. Pass each process "
        "--tls-ca DIR/ca.crt --tls-cert DIR/NODE.crt --tls-key DIR/NODE.key.",
    )  # fmt: skip
    parser.add_argument(
        "--dir", type=Path, default=Path("~/.config/llamaherd/tls"),
        help="where the CA and the certificates are (default: ~/.config/llamaherd/tls)",
    )  # fmt: skip
    actions = parser.add_subparsers(title="actions", metavar="ACTION", dest="certs_action")
    actions.add_parser("init", help="create the cluster CA (ca.crt, ca.key 0600)")
    issue = actions.add_parser("issue", help="create NODE.crt and NODE.key (0600)")
    issue.add_argument("node", help="the node id (the certificate's common name)")
    issue.add_argument(
        "--host", dest="hosts", action="append", default=[],
        help="a name or IP address the node is reached at; repeat for several (default: "
        "localhost and 127.0.0.1)",
    )  # fmt: skip
    parser.set_defaults(run=_run_certs)


def _run_certs(args: argparse.Namespace) -> int:
    from orchestrator.certs import init_ca, issue

    try:
        if args.certs_action == "init":
            made = init_ca(args.dir)
        elif args.certs_action == "issue":
            made = issue(args.node, args.dir, tuple(args.hosts))
        else:
            print("llamaherd certs: say init or issue NODE", file=sys.stderr)
            return 2
    except ConfigError as exc:
        print(f"llamaherd certs: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {made.cert} and {made.key} (0600)")
    return 0


def _add_bench_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    # The flags live with the benchmark (orchestrator/bench/cli.py); that module imports
    # httpx, rich and asyncio only when the command runs.
    from orchestrator.bench.cli import add_bench_parser

    add_bench_parser(subparsers)
    # `llamaherd capacity` measures one node through the gateway with the same machinery.
    from orchestrator.bench.capacity_cli import add_capacity_parser

    add_capacity_parser(subparsers)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llamaherd",
        description="Distributed inference for edge clusters of Jetson boards and PCs.",
    )
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    add_up_parser(subparsers)
    add_coordinator_parser(subparsers)
    add_worker_parser(subparsers)
    _add_status_parser(subparsers)
    _add_chat_parser(subparsers)
    _add_generate_parser(subparsers)
    _add_models_parser(subparsers)
    _add_certs_parser(subparsers)
    _add_bench_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
