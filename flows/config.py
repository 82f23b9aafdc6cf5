"""Run configurations: a TOML file → validated settings → the problem and the methods.

The format (documented for users in ``configs/README.md``)::

    [problem]            # a name from flows.problems.PROBLEMS and its keyword arguments
    name = "mlp"
    widths = [32, 32]

    [data]               # for problems that train on data: flows.problems.DATASETS
    name = "digits"
    n = 256

    [run]                # shared by all methods
    lr = 0.05            # or a list of learning rates: a sweep
    steps = 1000

    [methods.gd]         # one table per method, labelled; `method` defaults to the label
    [methods.cf_rmsprop]
    method = "central_flow"
    optimizer = "rmsprop"
    beta2 = 0.99

Validation happens in two stages, both before anything is computed or written:
`parse_config` checks the file's structure, names, types and ranges without
JAX (so it is cheap and safe to call on anything); `build_problem` and
`build_specs` then build the problem and the methods and turn whatever the
builders reject into a `ConfigError` too. Every error is one line that names
the table, the key and the value.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import inspect
import json
import math
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "ConfigError",
    "Config",
    "RunSettings",
    "MethodConfig",
    "RUN_DEFAULTS",
    "EIGENSOLVERS",
    "SOLVERS",
    "load_config",
    "parse_config",
    "build_problem",
    "build_specs",
    "make_eigensolver",
    "make_solver",
]


class ConfigError(ValueError):
    """Bad input in a run configuration; the message is one line naming the key or value."""


#: Eigensolvers by name (``[run] eigensolver``); "auto" is dense up to 1500 parameters.
EIGENSOLVERS = ("auto", "dense", "lanczos", "lobpcg")

#: diffrax solvers by name (``solver`` in a flow's table).
SOLVERS = ("tsit5", "dopri5", "dopri8", "bosh3", "heun", "midpoint", "ralston", "euler")

#: The keys of ``[run]`` and their defaults (``lr`` and ``steps`` are required).
RUN_DEFAULTS: dict[str, Any] = {
    "lr": None,
    "steps": None,
    "save_every": 1,
    "checkpoint_every": None,  # about 20 chunks
    "num_eigenvalues": 1,
    "eigensolver": "auto",
    "dtype": "float32",
    "seed": 0,
    "divergence_factor": 1e6,
    "save_params": True,
    "reference": None,  # "gd" when there is a method labelled gd
}

#: Keys of a method table that are not options of the method itself.
_METHOD_KEYS = ("method", "optimizer", "num_eigenvalues", "reference")
_FLOW_KEYS = ("solver", "rtol", "atol", "dt0", "max_steps")

_TABLES = ("problem", "data", "run", "methods")
MAX_STEPS = 10**9
_LABEL = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")


# ------------------------------------------------------------------- settings


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """The ``[run]`` table, validated, with defaults filled in."""

    lr: float | tuple[float, ...]
    steps: int
    save_every: int
    checkpoint_every: int | None
    num_eigenvalues: int
    eigensolver: str
    dtype: str
    seed: int
    divergence_factor: float
    save_params: bool
    reference: str | None

    @property
    def is_sweep(self) -> bool:
        return isinstance(self.lr, tuple)


@dataclasses.dataclass(frozen=True)
class MethodConfig:
    """One ``[methods.<label>]`` table, validated."""

    label: str
    method: str
    optimizer: str = "gd"
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    solver: str | None = None
    rtol: float | None = None
    atol: float | None = None
    dt0: float | None = None
    max_steps: int | None = None
    num_eigenvalues: int | None = None
    reference: str | None = None


@dataclasses.dataclass(frozen=True)
class Config:
    """A validated run configuration."""

    problem: Mapping[str, Any]  # name and keyword arguments
    data: Mapping[str, Any] | None
    run: RunSettings
    methods: tuple[MethodConfig, ...]
    source: str = "config"

    def as_dict(self) -> dict[str, Any]:
        """The normalized configuration (defaults filled in), as plain data."""
        out: dict[str, Any] = {"problem": dict(self.problem)}
        if self.data is not None:
            out["data"] = dict(self.data)
        run = dataclasses.asdict(self.run)
        if isinstance(run["lr"], tuple):
            run["lr"] = list(run["lr"])
        out["run"] = run
        out["methods"] = {}
        for m in self.methods:
            table = {"method": m.method}
            for key in ("optimizer", *_FLOW_KEYS, "num_eigenvalues", "reference"):
                value = getattr(m, key)
                if value is not None and not (key == "optimizer" and value == "gd"):
                    table[key] = value
            table.update(m.options)
            out["methods"][m.label] = table
        return out

    def fingerprint(self) -> str:
        """A hash of everything that decides the results (not the source path)."""
        text = json.dumps(self.as_dict(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()


# ------------------------------------------------------------------ checking


def _fmt(value: Any) -> str:
    text = repr(value)
    text = text.replace("\n", "\\n")
    return text if len(text) <= 60 else text[:57] + "..."


def _where(table: str, key: str | None = None) -> str:
    return f"[{table}]" if key is None else f"[{table}] {key}"


def _fail(where: str, message: str) -> ConfigError:
    return ConfigError(f"{where}: {message}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive_int(where: str, value: Any, *, minimum: int = 1) -> int:
    if not _is_int(value) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer ≥ {minimum}"
        raise _fail(where, f"expected {what}, got {_fmt(value)}")
    return value


def _positive_number(where: str, value: Any) -> float:
    if not _is_number(value) or not math.isfinite(value) or value <= 0:
        raise _fail(where, f"expected a positive number, got {_fmt(value)}")
    return float(value)


def _choice(where: str, value: Any, choices) -> str:
    if not isinstance(value, str) or value not in choices:
        raise _fail(where, f"unknown value {_fmt(value)}; choose one of {', '.join(choices)}")
    return value


def _table(where: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(where, f"expected a table, got {_fmt(value)}")
    return value


def _check_no_nesting(where: str, key: str, value: Any) -> None:
    """TOML values a builder can take: no tables or dates, lists of plain values."""
    if isinstance(value, Mapping):
        raise _fail(_where(where, key), f"expected a value, got a table {_fmt(dict(value))}")
    if isinstance(value, (datetime.date, datetime.time)):
        raise _fail(_where(where, key), f"expected a number, string or list, got {_fmt(value)}")
    if isinstance(value, list):
        for item in value:
            _check_no_nesting(where, key, item)


# Kinds of TOML values an annotation (or a default) allows.
_KINDS_OF_NAMES = {
    "int": {"int"},
    "float": {"int", "float"},
    "bool": {"bool"},
    "str": {"str"},
    "Path": {"str"},
    "Sequence": {"list"},
    "list": {"list"},
    "tuple": {"list"},
    "ArrayLike": {"int", "float", "list"},
    "Float": {"int", "float", "list"},
    "Array": {"int", "float", "list"},
    "Int": {"int", "list"},
    "None": set(),
}
_KIND_TEXT = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "str": "a string",
    "list": "a list",
}


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, list):
        return "list"
    return type(value).__name__


def _allowed_kinds(annotation: Any, default: Any) -> set[str] | None:
    """The value kinds a parameter takes, or None when any value may be passed.

    From the top level of its annotation (``"Sequence[int] | None"`` → a list), else
    from its default. An empty set means it cannot be set from a file (a function).
    """
    if isinstance(annotation, type):
        annotation = annotation.__name__
    if isinstance(annotation, str) and annotation.strip():
        top = annotation
        while True:  # drop bracketed parts: Sequence[int] -> Sequence
            stripped = re.sub(r"\[[^\[\]]*\]", "", top)
            if stripped == top:
                break
            top = stripped
        names = [n.split(".")[-1] for n in re.findall(r"[A-Za-z_][A-Za-z0-9_.]*", top)]
        kinds: set[str] = set()
        for name in names:
            kinds |= _KINDS_OF_NAMES.get(name, set())
        if kinds:
            return kinds
        if any(name not in _KINDS_OF_NAMES for name in names):
            return set()  # a function, a module, …
    if default is None or default is inspect.Parameter.empty or default is dataclasses.MISSING:
        return None
    if isinstance(default, bool):
        return {"bool"}
    if isinstance(default, int):
        return {"int"}
    if isinstance(default, float):
        return {"int", "float"}
    if isinstance(default, str):
        return {"str"}
    if isinstance(default, (list, tuple)):
        return {"list"}
    return set()


def _check_kind(where: str, value: Any, kinds: set[str] | None) -> None:
    if kinds is None:
        return
    if not kinds:
        raise _fail(where, f"cannot be set in a config file (got {_fmt(value)})")
    if _kind(value) not in kinds:
        shown = kinds - {"int"} if "float" in kinds else kinds  # a number covers integers
        expected = " or ".join(_KIND_TEXT[k] for k in sorted(shown, key=list(_KIND_TEXT).index))
        raise _fail(where, f"expected {expected}, got {_fmt(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise _fail(where, f"expected a finite number, got {_fmt(value)}")


def _check_kwargs(
    table: str, builder: Callable[..., Any], kwargs: Mapping[str, Any], skip: tuple[str, ...]
) -> None:
    """Names and value kinds of keyword arguments against the builder's signature."""
    parameters = {
        name: p
        for name, p in inspect.signature(builder).parameters.items()
        if name not in skip and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }
    for key, value in kwargs.items():
        if key not in parameters:
            accepted = ", ".join(sorted(parameters)) or "none"
            raise _fail(_where(table, key), f"unknown key; {table} {_name_of(builder)!r} "
                        f"takes: {accepted}")
        _check_no_nesting(table, key, value)
        p = parameters[key]
        _check_kind(_where(table, key), value, _allowed_kinds(p.annotation, p.default))
    missing = [
        name for name, p in parameters.items() if p.default is p.empty and name not in kwargs
    ]
    if missing:
        raise _fail(_where(table), f"missing required key(s): {', '.join(missing)}")


def _name_of(builder) -> str:
    return getattr(builder, "__name__", str(builder))


# ------------------------------------------------------------------- parsing


def load_config(path: str | Path) -> Config:
    """Read and validate a TOML run configuration (no JAX work)."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a config file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror or err})") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: invalid TOML: {str(err).splitlines()[0]}") from None
    try:
        return parse_config(raw, source=str(path))
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def parse_config(raw: Mapping[str, Any], source: str = "config") -> Config:
    """Validate a parsed configuration: names, types and ranges (no JAX work)."""
    from .methods import FLOWS, OPTIMIZERS
    from .problems import DATASETS, PROBLEMS

    for key, value in raw.items():
        if key not in _TABLES:
            raise ConfigError(f"unknown table [{key}]; the tables are {', '.join(_TABLES)}")
        _table(f"[{key}]", value)
    for key in ("problem", "run", "methods"):
        if key not in raw:
            raise ConfigError(f"missing table [{key}]")

    problem = dict(raw["problem"])
    name = problem.pop("name", None)
    if name is None:
        raise _fail(_where("problem", "name"), f"missing; choose one of {', '.join(PROBLEMS)}")
    _choice(_where("problem", "name"), name, list(PROBLEMS))
    builder = PROBLEMS[name]
    takes_data = "data" in inspect.signature(builder).parameters
    _check_kwargs("problem", builder, problem, skip=("data",))

    data = None
    if takes_data:
        if "data" not in raw:
            raise ConfigError(f"problem {name!r} trains on data: add a [data] table "
                              f"(name = one of {', '.join(DATASETS)})")
        data = dict(raw["data"])
        data_name = data.pop("name", None)
        if data_name is None:
            raise _fail(_where("data", "name"), f"missing; choose one of {', '.join(DATASETS)}")
        _choice(_where("data", "name"), data_name, list(DATASETS))
        _check_kwargs("data", DATASETS[data_name], data, skip=())
        data = {"name": data_name, **data}
    elif "data" in raw:
        raise ConfigError(f"[data]: problem {name!r} takes no data set; remove the table")

    run = _parse_run(dict(raw["run"]))
    methods = _parse_methods(raw["methods"], OPTIMIZERS, FLOWS)

    labels = [m.label for m in methods]
    reference = run.reference
    if reference is None and "gd" in labels:
        reference = "gd"
    elif reference is not None and reference not in labels:
        raise _fail(_where("run", "reference"),
                    f"{_fmt(reference)} is not a method label; the labels are {', '.join(labels)}")
    resolved = []
    for m in methods:
        ref = m.reference if m.reference is not None else reference
        if m.reference is not None and m.reference not in labels:
            raise _fail(_where(f"methods.{m.label}", "reference"),
                        f"{_fmt(m.reference)} is not a method label; the labels are "
                        f"{', '.join(labels)}")
        resolved.append(dataclasses.replace(m, reference=None if ref == m.label else ref))
    run = dataclasses.replace(run, reference=reference)
    return Config(
        problem={"name": name, **problem}, data=data, run=run, methods=tuple(resolved),
        source=source,
    )


def _parse_run(table: dict[str, Any]) -> RunSettings:
    for key in table:
        if key not in RUN_DEFAULTS:
            raise _fail(_where("run", key), f"unknown key; [run] takes: {', '.join(RUN_DEFAULTS)}")
    for key in ("lr", "steps"):
        if key not in table:
            raise _fail(_where("run", key), "missing (required)")
    values = {**RUN_DEFAULTS, **table}

    lr = values["lr"]
    if isinstance(lr, list):
        if not lr:
            raise _fail(_where("run", "lr"), "expected a positive number or a non-empty list "
                        "of them, got []")
        lr = tuple(_positive_number(_where("run", "lr"), v) for v in lr)
    else:
        lr = _positive_number(_where("run", "lr"), lr)
    steps = _positive_int(_where("run", "steps"), values["steps"])
    if steps > MAX_STEPS:
        raise _fail(_where("run", "steps"), f"{steps} is more than the {MAX_STEPS:.0e} allowed")
    save_every = _positive_int(_where("run", "save_every"), values["save_every"])
    if steps % save_every:
        raise _fail(_where("run", "save_every"), f"{save_every} must divide steps = {steps}")
    checkpoint_every = values["checkpoint_every"]
    if checkpoint_every is not None:
        checkpoint_every = _positive_int(_where("run", "checkpoint_every"), checkpoint_every)
        if checkpoint_every % save_every:
            raise _fail(_where("run", "checkpoint_every"),
                        f"{checkpoint_every} must be a multiple of save_every = {save_every}")
    num_eigenvalues = _positive_int(
        _where("run", "num_eigenvalues"), values["num_eigenvalues"], minimum=0
    )
    eigensolver = _choice(_where("run", "eigensolver"), values["eigensolver"], EIGENSOLVERS)
    dtype = _choice(_where("run", "dtype"), values["dtype"], ("float32", "float64"))
    seed = _positive_int(_where("run", "seed"), values["seed"], minimum=0)
    divergence_factor = _positive_number(
        _where("run", "divergence_factor"), values["divergence_factor"]
    )
    save_params = values["save_params"]
    if not isinstance(save_params, bool):
        raise _fail(
            _where("run", "save_params"), f"expected true or false, got {_fmt(save_params)}"
        )
    reference = values["reference"]
    if reference is not None and not isinstance(reference, str):
        raise _fail(_where("run", "reference"), f"expected a method label, got {_fmt(reference)}")
    return RunSettings(
        lr=lr, steps=steps, save_every=save_every, checkpoint_every=checkpoint_every,
        num_eigenvalues=num_eigenvalues, eigensolver=eigensolver, dtype=dtype, seed=seed,
        divergence_factor=divergence_factor, save_params=save_params, reference=reference,
    )


# Ranges of method options that the update rules and flows do not check themselves.
_OPTION_RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "beta2": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "eps": (lambda v: v >= 0, "a non-negative number"),
    "p": (lambda v: v > 0, "a positive number"),
    "loss_min": (lambda v: True, "a number"),
    "num_eigenvalues": (lambda v: v >= 1, "a positive integer"),
    "codim": (lambda v: v >= 1, "a positive integer"),
    "projection_iterations": (lambda v: v >= 1, "a positive integer"),
    "restoring_rate": (lambda v: v >= 0, "a non-negative number"),
    "initial_nu": (lambda v: v >= 0, "a non-negative number"),
}


def _option_fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def _parse_methods(table: Mapping[str, Any], optimizers, flows) -> list[MethodConfig]:
    from .methods import method_options

    if not table:
        raise ConfigError("[methods]: no methods; add e.g. [methods.gd]")
    known = ", ".join(sorted(optimizers) + sorted(flows))
    methods = []
    for label, body in table.items():
        where = f"methods.{label}"
        if not _LABEL.match(label):
            raise ConfigError(f"[{where}]: a label is letters, digits, '_', '.', '+' or '-'")
        body = dict(_table(f"[{where}]", body))
        method = body.pop("method", label)
        if not isinstance(method, str) or (method not in optimizers and method not in flows):
            key = "method" if "method" in table[label] else None
            what = f"unknown method {_fmt(method)}"
            if key is None:
                what += " (the label is the method unless `method = ...` is given)"
            raise _fail(_where(where, key), f"{what}; choose one of {known}")
        is_flow = method in flows
        optimizer = body.pop("optimizer", "gd")
        if "optimizer" in table[label] and not is_flow:
            raise _fail(_where(where, "optimizer"),
                        f"only flows model an optimizer; {method!r} is an optimizer itself")
        _choice(_where(where, "optimizer"), optimizer, sorted(optimizers))

        extra: dict[str, Any] = {}
        for key in _FLOW_KEYS:
            if key in body:
                if not is_flow:
                    raise _fail(_where(where, key), f"integrator options apply to flows only, "
                                f"and {method!r} is a discrete optimizer")
                extra[key] = body.pop(key)
        if "solver" in extra:
            _choice(_where(where, "solver"), extra["solver"], SOLVERS)
        for key in ("rtol", "atol", "dt0"):
            if key in extra:
                extra[key] = _positive_number(_where(where, key), extra[key])
        if "max_steps" in extra:
            extra["max_steps"] = _positive_int(_where(where, "max_steps"), extra["max_steps"])
        accepted = method_options(method, optimizer)
        num_eigenvalues = None
        if "num_eigenvalues" not in accepted:  # else it is an option of the flow
            num_eigenvalues = body.pop("num_eigenvalues", None)
        if num_eigenvalues is not None:
            num_eigenvalues = _positive_int(
                _where(where, "num_eigenvalues"), num_eigenvalues, minimum=0
            )
        reference = body.pop("reference", None)
        if reference is not None and not isinstance(reference, str):
            raise _fail(_where(where, "reference"), f"expected a method label, got "
                        f"{_fmt(reference)}")

        fields = _option_fields(optimizers[method] if not is_flow else optimizers[optimizer])
        if is_flow:
            fields.update(_option_fields(flows[method]))
        for key, value in body.items():
            if key not in accepted:
                takes = accepted | set(_METHOD_KEYS) | (set(_FLOW_KEYS) if is_flow else set())
                raise _fail(
                    _where(where, key), f"unknown key; {method!r} takes: {', '.join(sorted(takes))}"
                )
            _check_no_nesting(where, key, value)
            if key == "eigensolver":
                _choice(_where(where, key), value, EIGENSOLVERS)
                continue
            field = fields.get(key)
            kinds = _allowed_kinds(
                getattr(field, "type", None), getattr(field, "default", dataclasses.MISSING)
            )
            if kinds is None:
                kinds = {"int", "float", "bool", "list"}  # None by default: no strings
            _check_kind(_where(where, key), value, kinds)
            if key in _OPTION_RANGES and _is_number(value):
                ok, text = _OPTION_RANGES[key]
                if not ok(value):
                    raise _fail(_where(where, key), f"expected {text}, got {_fmt(value)}")
        methods.append(
            MethodConfig(
                label=label, method=method, optimizer=optimizer, options=body,
                num_eigenvalues=num_eigenvalues, reference=reference, **extra,
            )
        )
    return methods


# ------------------------------------------------------------------ building


def make_eigensolver(name: str):
    """The eigensolver called ``name`` (None for "auto": `flows` picks by size)."""
    from .linalg.eigen import LOBPCG, DenseEigh, Lanczos

    return {"auto": None, "dense": DenseEigh(), "lanczos": Lanczos(), "lobpcg": LOBPCG()}[name]


def make_solver(name: str | None):
    """The diffrax solver called ``name`` (None: the default, adaptive Tsit5)."""
    if name is None:
        return None
    import diffrax

    classes = {
        "tsit5": diffrax.Tsit5, "dopri5": diffrax.Dopri5, "dopri8": diffrax.Dopri8,
        "bosh3": diffrax.Bosh3, "heun": diffrax.Heun, "midpoint": diffrax.Midpoint,
        "ralston": diffrax.Ralston, "euler": diffrax.Euler,
    }
    return classes[name]()


def _with_seed(builder, kwargs: dict[str, Any], seed: int) -> dict[str, Any]:
    """``[run] seed`` seeds every builder that takes a seed and was not given one."""
    if "seed" in inspect.signature(builder).parameters and "seed" not in kwargs:
        return {**kwargs, "seed": seed}
    return kwargs


def _one_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    text = " ".join(lines)
    return text if len(text) <= 300 else text[:297] + "..."


def build_problem(config: Config):
    """The `Problem` of a configuration. Call after the dtype has been applied.

    Whatever the builders reject (a missing or corrupt data file, a value out of
    range) is raised as a one-line `ConfigError`.
    """
    from .problems import DATASETS, PROBLEMS

    kwargs = dict(config.problem)
    name = kwargs.pop("name")
    builder = PROBLEMS[name]
    if config.data is not None:
        data_kwargs = dict(config.data)
        data_name = data_kwargs.pop("name")
        data_builder = DATASETS[data_name]
        try:
            data = data_builder(**_with_seed(data_builder, data_kwargs, config.run.seed))
        except FileNotFoundError as err:
            raise ConfigError(f"[data] {data_name}: {_one_line(err)}") from None
        except Exception as err:  # a builder's rejection, whatever its type
            raise ConfigError(f"[data] {data_name}: {_one_line(err)}") from None
        kwargs["data"] = data
    try:
        problem = builder(**_with_seed(builder, kwargs, config.run.seed))
    except Exception as err:
        raise ConfigError(f"[problem] {name}: {_one_line(err)}") from None
    return problem


def _trace_once(problem, built) -> None:
    """Trace one step of the method without computing it: an option value that only
    fails inside traced code (a bad string, a negative size) fails here instead."""
    import equinox as eqx
    import jax.numpy as jnp

    from .vector_fields.base import VectorField

    if isinstance(built, VectorField):
        eqx.filter_eval_shape(lambda field: field(0.0, field.initial_state(), None), built)
        return
    f, w0 = problem.flat_loss, problem.w0

    def step(rule):
        return rule.update(jnp.asarray(0), rule.init(f, w0), f, w0, w0)

    eqx.filter_eval_shape(step, built)


def build_specs(config: Config, problem) -> list:
    """The `flows.checkpoint.MethodSpec` of every method, checked by building it once."""
    from .checkpoint import MethodSpec
    from .methods import make_method

    lr = config.run.lr[0] if config.run.is_sweep else config.run.lr
    n = problem.num_params
    specs = []
    for m in config.methods:
        k = config.run.num_eigenvalues if m.num_eigenvalues is None else m.num_eigenvalues
        where = "[run] num_eigenvalues" if m.num_eigenvalues is None else (
            f"[methods.{m.label}] num_eigenvalues")
        if k > n:
            raise ConfigError(f"{where}: {k} is more than the problem's {n} parameters")
        if config.run.eigensolver == "lobpcg" and 5 * k >= n:
            raise ConfigError(f"{where}: LOBPCG needs 5 × {k} < {n} parameters; "
                              "use eigensolver = \"dense\"")
        options = dict(m.options)
        if "eigensolver" in options:
            options["eigensolver"] = make_eigensolver(options["eigensolver"])
        try:
            built = make_method(problem, m.method, lr, optimizer=m.optimizer, options=options)
            _trace_once(problem, built)
        except Exception as err:  # whatever the method rejects, at build or trace time
            raise ConfigError(f"[methods.{m.label}]: {_one_line(err)}") from None
        specs.append(
            MethodSpec(
                label=m.label, method=m.method, optimizer=m.optimizer, options=options,
                solver=make_solver(m.solver), rtol=m.rtol, atol=m.atol, dt0=m.dt0,
                max_steps=m.max_steps, num_eigenvalues=m.num_eigenvalues, reference=m.reference,
            )
        )
    return specs
