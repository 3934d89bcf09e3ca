"""``worker models ...``: the repository and the control channel from the command line.

Commands that change what serves (promote, rollback, canary, shadow) read the control
channel to its end, compute the next desired state, validate any version it adds (as the
replicas will; ``--force`` skips this), write it, and with ``--wait`` report what each
replica did with it.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import getpass
import json
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.app import lifecycle
from worker.app.kafka import kafka_client
from worker.cli.options import KAFKA, Command, config_options, settings_from
from worker.config.compile import Compiled, compile_settings
from worker.config.settings import WorkerSettings
from worker.devtools.console import ProgressLine, count
from worker.errors import ConfigError, UsageError, WorkerError
from worker.inference import OnnxModel
from worker.lifecycle.card import card_path, read_card, write_card
from worker.lifecycle.control import ControlTable
from worker.lifecycle.golden import make_golden, sample_inputs
from worker.lifecycle.optimize import OptimizeReport, optimize
from worker.lifecycle.repository import ModelRepository
from worker.lifecycle.state import (
    REPLICA_PREFIX,
    DesiredState,
    ReplicaStatus,
    abort_canary,
    as_served,
    canary,
    model_key,
    promote,
    restore,
    rollback,
    shadow,
)
from worker.lifecycle.validation import ModelRefused, load_file, load_version

_DESCRIPTION = ("Model versions live in model.repository as <name>/<version>/model.onnx with model-card.json. "
                "promote, rollback, canary and shadow write the next desired state to the control channel "
                "(lifecycle.control_topic or control_file) after validating any version they add; every replica "
                "validates it again and applies it at a batch boundary, without restarting. status shows what "
                "each replica applied.")


def register(sub: Any) -> None:
    """Registers ``worker models <command>``."""
    parser = sub.add_parser("models", help="model versions: list, validate, promote, rollback, canary, shadow, "
                            "status, optimize, golden, evaluate", description=_DESCRIPTION)
    commands = parser.add_subparsers(dest="models_command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, fn: Command) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = commands.add_parser(name, help=help_text, description=help_text)
        config_options(p, only=KAFKA)
        p.set_defaults(fn=_guarded(fn))
        return p

    command("list", "versions in the model repository, with what their cards say", cmd_list)
    command("validate", "run every check a replica runs before serving a version",
            cmd_validate).add_argument("version", nargs="?", help="default: the configured version")
    _change(command("promote", "make a version active on every replica (default: the canary's or shadow's)",
                    cmd_promote)).add_argument("version", nargs="?")
    _change(command("rollback", "return every replica to the previously active version; ends canary and shadow",
                    cmd_rollback)).add_argument("--to", metavar="VERSION", help="this version instead")
    p = _change(command("canary", "score a stable share of keys with a version", cmd_canary))
    p.add_argument("version", nargs="?")
    p.add_argument("--share", type=float, default=0.1, help="share of keys, 0-1 (default 0.1)")
    p.add_argument("--off", action="store_true", help="end the canary")
    p = _change(command("shadow", "also score every event with a version, into the shadow topic", cmd_shadow))
    p.add_argument("version", nargs="?")
    p.add_argument("--off", action="store_true", help="end the shadow")
    command("status", "the desired state and what each replica applied",
            cmd_status).add_argument("--json", action="store_true", help="print JSON")
    p = command("optimize", "write a graph-optimised (and, with MatMul/Gemm, int8-quantised) new version",
                cmd_optimize)
    p.add_argument("version")
    p.add_argument("--to", metavar="VERSION", help="the new version's name (default: the next number)")
    p.add_argument("--no-quantize", action="store_true", help="graph optimisation only")
    p.add_argument("--batch-size", type=int, default=256, help="batch size the speed is measured at")
    p.add_argument("--golden-atol", type=float, help="tolerance written into the new card for its golden vectors "
                   "(the accuracy loss you accept; quantised models rarely match to 1e-5)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p = command("golden", "write golden vectors into a trusted version's card, from its own outputs", cmd_golden)
    p.add_argument("version")
    p.add_argument("--count", type=int, default=20, help="how many vectors (default 20)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--replace", action="store_true", help="replace golden vectors the card already has")
    _evaluate_parser(commands)


def _change(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--force", action="store_true", help="write the command without validating here first")
    parser.add_argument("--wait", type=float, default=0, metavar="SECONDS",
                        help="wait this long for every replica to apply (or refuse) it")
    parser.add_argument("--reason", default="", help="recorded with the command")
    return parser


def _guarded(fn: Command) -> Command:
    @functools.wraps(fn)
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except ModelRefused as exc:
            print(f"refused: {exc.name} v{exc.version}:", file=sys.stderr)
            for reason in exc.reasons:
                print(f"  - {reason}", file=sys.stderr)
            return 1
        except (ConfigError, UsageError):
            raise  # main gives them their own exit code (2), so that 1 keeps meaning refused or a failed gate
        except WorkerError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return run


@dataclass
class _Context:
    settings: WorkerSettings
    compiled: Compiled
    name: str

    @property
    def repository(self) -> ModelRepository:
        root = self.settings.model.repository
        if root is None:
            raise ConfigError.at("model.repository", "versions live in a model repository: set model.repository, "
                                                     "model.name and model.version instead of model.path")
        return ModelRepository(root)

    def table(self) -> ControlTable:
        table = lifecycle.open_table(self.settings, kafka_client(self.settings))
        if table is None:
            raise ConfigError.at("lifecycle", "no control channel: set lifecycle.control_topic (or control_file)")
        return table


def _context(args: argparse.Namespace) -> _Context:
    settings = settings_from(args)
    compiled = compile_settings(settings)
    return _Context(settings, compiled, compiled.model.name)


def _issuer() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def cmd_list(args: argparse.Namespace) -> int:
    ctx = _context(args)
    if ctx.settings.model.repository is None:
        print(f"{ctx.name} v{ctx.compiled.model.version}: {ctx.settings.model.onnx_path()} (a single file; "
              "versions need model.repository)")
        return 0
    repository, configured = ctx.repository, ctx.compiled.model.version
    print(f"{ctx.name} in {repository.root} (the configuration names v{configured})")
    print(f"  {'VERSION':<10} {'SIZE':>10}  {'GOLDEN':>6}  {'FROM':<14} CARD")
    for version in repository.versions(ctx.name):
        info = repository.info(ctx.name, version)
        card = info.card
        origin = (card.data.get("provenance") or {}).get("derived_from") if card else None
        source = f"v{origin['version']}" if isinstance(origin, dict) and "version" in origin else "-"
        golden = str(len(card.golden)) if card else "?"
        summary = card.summary() if card else f"unreadable card: {info.card_problem}"
        mark = "  <- configured" if version == configured else ""
        print(f"  {version:<10} {_size(info.size_bytes):>10}  {golden:>6}  {source:<14} {summary}{mark}")
    return 0


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} KB"


def cmd_validate(args: argparse.Namespace) -> int:
    ctx = _context(args)
    sig, pol = lifecycle.signature(ctx.compiled), lifecycle.policy(ctx.settings)
    version = args.version or ctx.compiled.model.version
    if ctx.settings.model.repository is None:
        validated = load_file(ctx.settings.model.onnx_path(), ctx.name, version, sig, pol)
    else:
        validated = load_version(ctx.repository, ctx.name, version, sig, pol)
    print(f"{ctx.name} v{version}: servable")
    for note in validated.notes:
        print(f"  - {note}")
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    return _command(args, lambda state, who, _: promote(state, args.version, who))


def cmd_rollback(args: argparse.Namespace) -> int:
    def back(state: DesiredState, who: str, refused: bool) -> DesiredState:
        if refused and args.to is None:
            return restore(state, who, args.reason)
        return rollback(state, args.to, who, args.reason)

    return _command(args, back)


def cmd_canary(args: argparse.Namespace) -> int:
    if args.off:
        return _command(args, lambda state, who, _: abort_canary(state, who, args.reason or "ended by hand"))
    if not args.version:
        raise ConfigError.at("version", "name the version to run as a canary (or --off)")
    return _command(args, lambda state, who, _: canary(state, args.version, args.share, who))


def cmd_shadow(args: argparse.Namespace) -> int:
    if not args.off and not args.version:
        raise ConfigError.at("version", "name the version to run as a shadow (or --off)")
    return _command(args, lambda state, who, _: shadow(state, None if args.off else args.version, who))


Transition = Callable[[DesiredState, str, bool], DesiredState]


def _command(args: argparse.Namespace, transition: Transition) -> int:
    """``transition(state, issued_by, refused)`` gives the next desired state; ``refused`` says
    that every replica refused the current one, so ``state`` is what they serve instead."""
    ctx = _context(args)
    table = ctx.table()
    try:
        snapshot = table.catch_up(ctx.settings.lifecycle.catch_up_timeout_s)
        desired = _desired(snapshot, ctx)
        current = as_served(desired, list(_replicas(snapshot, ctx.name).values()))
        if current is not desired:
            print(f"every replica refused revision {desired.revision}; this applies to what they serve: "
                  f"{current.describe()}")
        new = transition(current, _issuer(), current is not desired)
        if args.reason and not new.reason:
            new = dataclasses.replace(new, reason=args.reason)
        if not args.force:
            _validate_added(ctx, current, new)
        table.put(model_key(ctx.name), new.to_json())
        print(f"revision {new.revision} ({new.command}): {new.describe()}")
        return _wait(table, snapshot, ctx.name, new.revision, args.wait) if args.wait else 0
    finally:
        table.close()


def _desired(snapshot: dict[str, Any], ctx: _Context) -> DesiredState:
    raw = snapshot.get(model_key(ctx.name))
    if raw is None:
        return DesiredState(ctx.name, 0, ctx.compiled.model.version)
    try:
        return DesiredState.from_json(raw)
    except ValueError as exc:
        raise WorkerError(f"the control channel's state for {ctx.name} is unreadable: {exc}") from exc


def _validate_added(ctx: _Context, current: DesiredState, new: DesiredState) -> None:
    sig, pol = lifecycle.signature(ctx.compiled), lifecycle.policy(ctx.settings)
    for version in new.versions():
        if version not in current.versions():
            validated = load_version(ctx.repository, ctx.name, version, sig, pol)
            print(f"v{version} validated: {'; '.join(validated.notes)}")


def _replicas(table: dict[str, Any], name: str) -> dict[str, ReplicaStatus]:
    prefix = f"{REPLICA_PREFIX}{name}/"
    return {key: ReplicaStatus.from_json(value) for key, value in table.items()
            if key.startswith(prefix) and value is not None}


def _wait(table: ControlTable, snapshot: dict[str, Any], name: str, revision: int, timeout_s: float) -> int:
    known = dict(snapshot)
    deadline = time.monotonic() + timeout_s
    while True:
        replicas = _replicas(known, name)
        if replicas and all(r.settled(revision) for r in replicas.values()):
            break
        if time.monotonic() > deadline:
            pending = [r.replica for r in replicas.values() if not r.settled(revision)]
            print(f"not every replica reported revision {revision} within {timeout_s:g}s "
                  f"(pending: {', '.join(pending) or 'no replica has reported'})")
            return 1
        for key, value in table.poll(0.2).items():
            known[key] = value
    for status in sorted(replicas.values(), key=lambda r: r.replica):
        print(f"  {status.replica}: {_describe(status, revision)}")
    return 1 if any(r.refused and r.refused.revision >= revision for r in replicas.values()) else 0


def _describe(status: ReplicaStatus, revision: int) -> str:
    serving = DesiredState(status.model, status.revision, status.active, canary=status.canary,
                           canary_share=status.canary_share, shadow=status.shadow).describe()
    refused = status.refused
    if refused is not None and refused.revision >= revision:
        return (f"REFUSED revision {refused.revision} (v{refused.version}: {'; '.join(refused.reasons)}); "
                f"still serving revision {status.revision}: {serving}")
    state = "serving" if status.revision >= revision else "behind, serving"
    return f"{state} revision {status.revision}: {serving}"


def cmd_status(args: argparse.Namespace) -> int:
    ctx = _context(args)
    table = ctx.table()
    try:
        snapshot = table.catch_up(ctx.settings.lifecycle.catch_up_timeout_s)
    finally:
        table.close()
    desired = _desired(snapshot, ctx)
    replicas = sorted(_replicas(snapshot, ctx.name).values(), key=lambda r: r.replica)
    if args.json:
        print(json.dumps({"desired": desired.to_json(), "replicas": [r.to_json() for r in replicas]}, indent=1))
    else:
        _print_status(desired, replicas)
    return 1 if any(r.refused and r.refused.revision >= desired.revision for r in replicas) else 0


def _print_status(desired: DesiredState, replicas: list[ReplicaStatus]) -> None:
    origin = "from the configuration" if desired.revision == 0 else \
        f"{desired.command} by {desired.issued_by or '?'}, {_ago(desired.issued_at_ms)}"
    print(f"{desired.model}: revision {desired.revision}: {desired.describe()} ({origin})")
    if desired.reason:
        print(f"  reason: {desired.reason}")
    if desired.history:
        print(f"  previously active: {', '.join('v' + v for v in desired.history)}")
    if not replicas:
        print("  no replica has reported (none is running with this control channel)")
    for status in replicas:
        print(f"  {status.replica}: {_describe(status, desired.revision)} (reported {_ago(status.updated_at_ms)})")


def _ago(ms: int) -> str:
    if not ms:
        return "at an unknown time"
    seconds = max(0.0, time.time() - ms / 1000)
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    return datetime.datetime.fromtimestamp(ms / 1000).isoformat(sep=" ", timespec="seconds")


def cmd_optimize(args: argparse.Namespace) -> int:
    ctx = _context(args)
    report = optimize(ctx.repository, ctx.name, args.version, args.to, lifecycle.signature(ctx.compiled),
                      lifecycle.policy(ctx.settings), quantize=not args.no_quantize, batch_size=args.batch_size,
                      golden_atol=args.golden_atol)
    if args.json:
        print(json.dumps(report.to_json(), indent=1))
    else:
        _print_optimize(report)
    return 1 if report.refused else 0


def _print_optimize(r: OptimizeReport) -> None:
    print(f"{r.name} v{r.source} -> v{r.target} ({r.path.parent})")
    for step in r.steps:
        print(f"  - {step}")
    print(f"  {'':<12} {'SIZE':>10} {'BATCH OF ' + str(r.batch_size):>14} {'GOLDEN MAX DIFF':>16}")
    for label, m in ((f"v{r.source}", r.before), (f"v{r.target}", r.after)):
        golden = "no vectors" if m.golden_max_diff is None else f"{m.golden_max_diff:.2g}"
        print(f"  {label:<12} {_size(m.size_bytes):>10} {m.latency_ms:>11.3f} ms {golden:>16}")
    print(f"  largest score difference from v{r.source} on {r.batch_size} sample inputs: "
          f"{r.max_diff_from_source:.3g}")
    if r.refused:
        print(f"  NOT servable: {'; '.join(r.refused)}")
    else:
        print(f"  servable: {'; '.join(r.validation)}")


def cmd_golden(args: argparse.Namespace) -> int:
    ctx = _context(args)
    if ctx.settings.model.repository is None:
        path, version = ctx.settings.model.onnx_path(), args.version
    else:
        if not ctx.repository.exists(ctx.name, args.version):
            raise WorkerError(ctx.repository.missing(ctx.name, args.version))
        path, version = ctx.repository.path(ctx.name, args.version), args.version
    card = read_card(path)
    if card.golden and not args.replace:
        raise WorkerError(f"the card of v{version} already has {len(card.golden)} golden vectors (--replace)")
    sig = lifecycle.signature(ctx.compiled)
    model = OnnxModel(path, ctx.name, version, ctx.settings.model.threads)
    feeds = sample_inputs(sig.inputs, args.count, card, args.seed)
    data = dict(card.data) or {"name": ctx.name, "version": version}
    data["golden"] = make_golden(model, sig.inputs, list(sig.outputs), feeds)
    data["golden_source"] = {"tool": "worker models golden", "seed": args.seed,
                             "inputs": "reference_stats" if card.reference_stats else "random",
                             "created_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    target = card_path(path)
    write_card(target, data)
    print(f"wrote {args.count} golden vectors of v{version} to {target}")
    return 0


_EVALUATE = ("score labelled rows with a version and the serving one in one pass (same features, same feeds) "
             "and compare them: AUC, precision and recall at model.threshold, log loss, calibration, labels changed, "
             "score changes; exit 1 when a gate fails")


def _evaluate_parser(commands: Any) -> None:
    """``worker models evaluate``: it reads Redis, so ``--redis-url`` is the override it shows."""
    p: argparse.ArgumentParser = commands.add_parser("evaluate", help=_EVALUATE, description=_EVALUATE)
    config_options(p, only=("redis_url",))
    p.set_defaults(fn=_guarded(cmd_evaluate))
    p.add_argument("version", help="the candidate: a version of model.repository")
    p.add_argument("--input", required=True, type=Path, metavar="LABELLED",
                   help="rows in the input schema plus a label field: .avro (container file), .jsonl, .parquet")
    p.add_argument("--label-field", default="label", metavar="F",
                   help="the label: a boolean, or a number (non-zero is positive); default label")
    p.add_argument("--against", metavar="VERSION", help="the serving version (default: the configured model.version)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--plot", type=Path, metavar="PNG", help="draw both versions' ROC and calibration curves")
    p.add_argument("--min-auc", type=float, metavar="X", help="gate: the candidate's AUC is at least X")
    p.add_argument("--max-auc-drop", type=float, metavar="X",
                   help="gate: the serving version's AUC minus the candidate's is at most X")
    p.add_argument("--max-label-flip", type=float, metavar="X",
                   help="gate: the share of rows whose label (score >= model.threshold) changes is at most X")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from worker.app.evaluate import EvaluateJob, Gates, evaluate, table  # numpy-heavy: only when evaluating

    settings = settings_from(args)
    gates = Gates(args.min_auc, args.max_auc_drop, args.max_label_flip)
    job = EvaluateJob(args.version, args.input, args.label_field, args.against, gates, args.plot)
    line, started = ProgressLine(), time.monotonic()

    def report(rows: int, skipped: int, share: float | None) -> None:
        seconds = time.monotonic() - started
        text = f"{count(rows)} rows, {count(rows / seconds if seconds > 0 else 0)} rows/s, {count(skipped)} skipped"
        line.update(text + (f", {share:.0%}" if share else ""))

    try:
        result = evaluate(settings, job, report)
    finally:
        line.done()
    print(json.dumps(result.to_json(), indent=1) if args.json else table(result))
    if args.plot:
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0 if result.passed else 1
