"""Run configurations: a TOML file → a validated `Config` → the problem.

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

The run part of a `Config` is a `flows.options.RunSpec`: every method table becomes a
`flows.options.Method` (its ``solver``, ``rtol``, ``atol``, ``dt0`` and ``max_steps`` the
method's `Integrator`; a ``num_eigenvalues`` that is not an option of the method its own
`Tracking`), and ``[run] num_eigenvalues`` and ``eigensolver`` the run's `Tracking`.

Validation happens in two stages, both before anything is computed or written:
`parse_config` checks the file's structure, names, types and ranges (a number the run's
dtype cannot hold, 0 or inf once cast, included) without computing anything;
`build_problem` and `check_methods` then build the problem and each method once (the
central flow's eigenvector counts against the number of parameters) and turn whatever
the builders reject into a `ConfigError` too. Every error is one line that names the
table, the key and the value.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import re
import sys
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..methods import FLOWS, OPTIMIZERS, default_optimizer, method_options
from ..options import (
    EIGENSOLVERS,
    RENAMED_OPTIONS,
    SOLVERS,
    ConfigError,
    Integrator,
    Method,
    RunSpec,
    Tracking,
    check_start_from,
    renamed,
)
from .schema import (
    allowed_kinds,
    check_kind,
    check_kwargs,
    check_no_nesting,
    choice,
    fail,
    fmt,
    in_dtype,
    is_number,
    one_line,
    positive_int,
    positive_number,
    representable,
    table,
    where,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "ConfigError",
    "Config",
    "RUN_DEFAULTS",
    "load_config",
    "parse_config",
    "build_problem",
    "check_methods",
]

#: The keys of ``[run]`` and their defaults (``lr`` and ``steps`` are required).
RUN_DEFAULTS: dict[str, Any] = {
    "lr": None,
    "steps": None,
    "save_every": 1,
    "checkpoint_every": None,  # about 20 chunks
    "num_eigenvalues": 1,
    "eigensolver": "auto",
    "effective": False,  # track λ(P⁻¹H), each optimizer against its own threshold
    "dtype": "float32",
    "seed": 0,
    "divergence_factor": 1e6,
    "save_params": True,
    "reference": None,  # "gd" when there is a method labelled gd
}

#: Keys of a method table that are not options of the method itself.
_METHOD_KEYS = ("method", "optimizer", "num_eigenvalues", "reference", "start_from")
#: Keys of a flow's table that make its `Integrator`.
_INTEGRATOR_KEYS = ("solver", "rtol", "atol", "dt0", "max_steps")

_TABLES = ("problem", "data", "run", "methods")
MAX_STEPS = 10**9
_LABEL = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")


# ---------------------------------------------------------------------- Config


def _name_of(registry: Mapping[str, Any], value: Any) -> str:
    """The registry name of a solver or eigensolver built from a name (None: "auto")."""
    if value is None:
        return "auto"
    for name, cls in registry.items():
        if cls is not None and type(value) is cls:
            return name
    return repr(value)  # not built from a config; shown as is


@dataclasses.dataclass(frozen=True)
class Config:
    """A validated run configuration.

    Attributes:
        problem: the problem's name and keyword arguments.
        data: the data set's name and keyword arguments (None: the problem takes none).
        run: the methods and the shared settings, a `flows.options.RunSpec`.
        dtype: ``"float32"`` or ``"float64"``, applied before anything is built.
        seed: seeds every builder that takes a seed and was not given one.
        reference: ``[run] reference`` resolved (``"gd"`` if there is a method labelled gd).
        source: where the configuration was read from (not part of its fingerprint).
        notes: one-line notes for the user (renamed keys), printed by the command line.
    """

    problem: Mapping[str, Any]
    data: Mapping[str, Any] | None
    run: RunSpec
    dtype: str = "float32"
    seed: int = 0
    reference: str | None = None
    source: str = "config"
    notes: tuple[str, ...] = ()

    @property
    def labels(self) -> list[str]:
        return list(self.run.methods)

    def as_dict(self) -> dict[str, Any]:
        """The normalized configuration (defaults filled in), as plain data."""
        spec = self.run
        out: dict[str, Any] = {"problem": dict(self.problem)}
        if self.data is not None:
            out["data"] = dict(self.data)
        out["run"] = {
            "lr": list(spec.lr) if spec.is_sweep else spec.lr,
            "steps": spec.steps,
            "save_every": spec.save_every,
            "checkpoint_every": spec.checkpoint_every,
            "num_eigenvalues": spec.tracking.num_eigenvalues,
            "eigensolver": _name_of(EIGENSOLVERS, spec.tracking.eigensolver),
            "effective": spec.tracking.effective,
            "dtype": self.dtype,
            "seed": self.seed,
            "divergence_factor": spec.divergence_factor,
            "save_params": spec.save_params,
            "reference": self.reference,
        }
        out["methods"] = {label: _method_dict(label, m, spec) for label, m in spec.methods.items()}
        return out

    def fingerprint(self) -> str:
        """A hash of everything that decides the results (not the source path)."""
        text = json.dumps(self.as_dict(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()


def _method_dict(label: str, method: Method, spec: RunSpec) -> dict[str, Any]:
    entry: dict[str, Any] = {"method": method.name}
    if method.optimizer not in (None, "gd"):
        entry["optimizer"] = method.optimizer
    integrator = method.integrator
    if integrator.solver is not None:
        entry["solver"] = _name_of(SOLVERS, integrator.solver)
    for key in ("rtol", "atol", "dt0", "max_steps"):
        if getattr(integrator, key) is not None:
            entry[key] = getattr(integrator, key)
    if method.tracking is not None:
        entry["num_eigenvalues"] = method.tracking.num_eigenvalues
    if label in spec.references:
        entry["reference"] = spec.references[label]
    if label in spec.start_from:
        source, step = spec.start_from[label]
        entry["start_from"] = {"method": source, "step": step}
    for key, value in method.options.items():
        entry[key] = _name_of(EIGENSOLVERS, value) if key == "eigensolver" else value
    return entry


# --------------------------------------------------------------------- parsing


def load_config(path: str | Path) -> Config:
    """Read and validate a TOML run configuration (nothing is computed)."""
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
    """Validate a parsed configuration: names, types and ranges (nothing is computed)."""
    from ..problems import DATASETS, PROBLEMS

    for key, value in raw.items():
        if key not in _TABLES:
            raise ConfigError(f"unknown table [{key}]; the tables are {', '.join(_TABLES)}")
        table(f"[{key}]", value)
    for key in ("problem", "run", "methods"):
        if key not in raw:
            raise ConfigError(f"missing table [{key}]")

    problem = dict(raw["problem"])
    name = problem.pop("name", None)
    if name is None:
        raise fail(where("problem", "name"), f"missing; choose one of {', '.join(PROBLEMS)}")
    choice(where("problem", "name"), name, PROBLEMS)
    builder = PROBLEMS[name]
    takes_data = "data" in inspect.signature(builder).parameters
    check_kwargs("problem", builder, problem, skip=("data",))
    _check_seed("problem", problem)

    data = None
    if takes_data:
        if "data" not in raw:
            raise ConfigError(f"problem {name!r} trains on data: add a [data] table "
                              f"(name = one of {', '.join(DATASETS)})")
        data = dict(raw["data"])
        data_name = data.pop("name", None)
        if data_name is None:
            raise fail(where("data", "name"), f"missing; choose one of {', '.join(DATASETS)}")
        choice(where("data", "name"), data_name, DATASETS)
        check_kwargs("data", DATASETS[data_name], data)
        _check_seed("data", data)
        data = {"name": data_name, **data}
    elif "data" in raw:
        raise ConfigError(f"[data]: problem {name!r} takes no data set; remove the table")

    run = _parse_run(dict(raw["run"]))
    dtype = run["dtype"]
    for table_name, kwargs in (("problem", problem), ("data", data or {})):
        for key, value in kwargs.items():  # a number that overflows the run's dtype
            representable(where(table_name, key), value, dtype, underflow=False)
    notes: list[str] = []
    tables = _parse_methods(raw["methods"], notes, dtype)
    for t in tables:
        dt0 = t.integrator.dt0
        if dt0 is not None and run["steps"] / dt0 > MAX_STEPS:
            raise fail(where(f"methods.{t.label}", "dt0"),
                       f"{fmt(dt0)} takes {run['steps'] / dt0:.3g} integrator steps for "
                       f"steps = {run['steps']}, more than the {MAX_STEPS:.0e} allowed")

    labels = [t.label for t in tables]
    reference = run["reference"]
    if reference is None and "gd" in labels:
        reference = "gd"
    elif reference is not None and reference not in labels:
        raise fail(where("run", "reference"),
                   f"{fmt(reference)} is not a method label; the labels are {', '.join(labels)}")
    references = {}
    for t in tables:
        if t.reference is not None and t.reference not in labels:
            raise fail(where(f"methods.{t.label}", "reference"),
                       f"{fmt(t.reference)} is not a method label; the labels are "
                       f"{', '.join(labels)}")
        ref = t.reference if t.reference is not None else reference
        if ref is not None and ref != t.label:
            references[t.label] = ref

    tracking = Tracking(num_eigenvalues=run["num_eigenvalues"], eigensolver=run["eigensolver"],
                        effective=run["effective"])
    methods = {t.label: t.method(tracking) for t in tables}
    start_from = {t.label: t.start_from for t in tables if t.start_from is not None}
    for label, (source, step) in start_from.items():
        try:
            check_start_from(methods, run["steps"], run["save_every"], label, source, step)
        except ValueError as err:
            message = one_line(err).removeprefix("start_from: ")
            raise fail(where(f"methods.{label}", "start_from"), message) from None
    try:
        spec = RunSpec(
            methods=methods, lr=run["lr"], steps=run["steps"], save_every=run["save_every"],
            checkpoint_every=run["checkpoint_every"], tracking=tracking,
            divergence_factor=run["divergence_factor"], references=references,
            save_params=run["save_params"], start_from=start_from,
        )
    except ValueError as err:  # checked above already; a safety net
        raise ConfigError(f"[run]: {one_line(err)}") from None
    return Config(
        problem={"name": name, **problem}, data=data, run=spec, dtype=run["dtype"],
        seed=run["seed"], reference=reference, source=source, notes=tuple(notes),
    )


def _check_seed(table_name: str, kwargs: Mapping[str, Any]) -> None:
    if "seed" in kwargs:
        positive_int(where(table_name, "seed"), kwargs["seed"], minimum=0)


def _parse_run(values: dict[str, Any]) -> dict[str, Any]:
    """The ``[run]`` table, checked, with defaults filled in."""
    for key in values:
        if key not in RUN_DEFAULTS:
            raise fail(where("run", key), f"unknown key; [run] takes: {', '.join(RUN_DEFAULTS)}")
    for key in ("lr", "steps"):
        if key not in values:
            raise fail(where("run", key), "missing (required)")
    values = {**RUN_DEFAULTS, **values}

    def at(key: str) -> str:
        return where("run", key)

    dtype = choice(at("dtype"), values["dtype"], ("float32", "float64"))

    def positive(key: str, value: Any) -> float:  # and not 0 or inf in the run's dtype
        value = positive_number(at(key), value)
        representable(at(key), value, dtype)
        return value

    lr = values["lr"]
    if isinstance(lr, list):
        if not lr:
            raise fail(at("lr"), "expected a positive number or a non-empty list of them, got []")
        lr = tuple(positive("lr", v) for v in lr)
    else:
        lr = positive("lr", lr)
    steps = positive_int(at("steps"), values["steps"])
    if steps > MAX_STEPS:
        raise fail(at("steps"), f"{steps} is more than the {MAX_STEPS:.0e} allowed")
    save_every = positive_int(at("save_every"), values["save_every"])
    if steps % save_every:
        raise fail(at("save_every"), f"{save_every} must divide steps = {steps}")
    checkpoint_every = values["checkpoint_every"]
    if checkpoint_every is not None:
        checkpoint_every = positive_int(at("checkpoint_every"), checkpoint_every)
        if checkpoint_every % save_every:
            raise fail(at("checkpoint_every"),
                       f"{checkpoint_every} must be a multiple of save_every = {save_every}")
    save_params = values["save_params"]
    for key in ("save_params", "effective"):
        if not isinstance(values[key], bool):
            raise fail(at(key), f"expected true or false, got {fmt(values[key])}")
    reference = values["reference"]
    if reference is not None and not isinstance(reference, str):
        raise fail(at("reference"), f"expected a method label, got {fmt(reference)}")
    return {
        "lr": lr,
        "steps": steps,
        "save_every": save_every,
        "checkpoint_every": checkpoint_every,
        "num_eigenvalues": positive_int(
            at("num_eigenvalues"), values["num_eigenvalues"], minimum=0
        ),
        "eigensolver": choice(at("eigensolver"), values["eigensolver"], EIGENSOLVERS),
        "effective": values["effective"],
        "dtype": dtype,
        "seed": positive_int(at("seed"), values["seed"], minimum=0),
        "divergence_factor": positive("divergence_factor", values["divergence_factor"]),
        "save_params": save_params,
        "reference": reference,
    }


# Ranges of method options, checked here to name the key (the update rules and flows
# check most of them again when they are built).
_OPTION_RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "beta2": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "eps": (lambda v: v >= 0, "a non-negative number"),
    "p": (lambda v: v > 0, "a positive number"),
    "loss_min": (lambda v: True, "a number"),
    "num_eigenvalues": (lambda v: v >= 1, "a positive integer"),
    "max_edge": (lambda v: v >= 1, "a positive integer"),
    "guard": (lambda v: v >= 0, "a non-negative integer"),
    "refine_iterations": (lambda v: v >= 1, "a positive integer"),
    "refine_rtol": (lambda v: v >= 0, "a non-negative number"),
    "refresh_interval": (lambda v: v >= 1, "a positive integer"),
    "refresh_tolerance": (lambda v: v >= 0, "a non-negative number"),
    "edge_margin": (lambda v: v >= 0, "a non-negative number"),
    "num_matvecs": (lambda v: v >= 1, "a positive integer"),
    "codim": (lambda v: v >= 1, "a positive integer"),
    "projection_iterations": (lambda v: v >= 0, "a non-negative integer"),
    "restoring_rate": (lambda v: v >= 0, "a non-negative number"),
    "initial_nu": (lambda v: v >= 0, "a non-negative number"),
}


def _option_fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


@dataclasses.dataclass(frozen=True)
class _MethodTable:
    """One ``[methods.<label>]`` table, checked; `method` makes its `Method`."""

    label: str
    name: str
    optimizer: str | None
    options: dict[str, Any]
    integrator: Integrator
    num_eigenvalues: int | None
    reference: str | None
    start_from: tuple[str, int] | None = None

    def method(self, run_tracking: Tracking) -> Method:
        tracking = None
        if self.num_eigenvalues is not None:  # this method's own count, the run's solver
            tracking = Tracking(
                num_eigenvalues=self.num_eigenvalues, eigensolver=run_tracking.eigensolver,
                effective=run_tracking.effective,
            )
        try:
            return Method(
                self.name, optimizer=self.optimizer, options=self.options,
                integrator=self.integrator, tracking=tracking,
            )
        except ValueError as err:  # checked already; a safety net
            raise ConfigError(f"[methods.{self.label}]: {one_line(err)}") from None


def _rename(place: str, body: dict[str, Any], accepted: set[str], notes: list[str]) -> None:
    """Old names of options (`flows.options.RENAMED_OPTIONS`) → the new ones, in place,
    with a note; only where the new name is an option of this method."""
    old_names = {
        old: new for old, new in RENAMED_OPTIONS.items()
        if old in body and new in accepted and old not in accepted
    }
    if not old_names:
        return
    part = {key: body[key] for key in body if key in old_names or key in old_names.values()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            new = renamed(part, where=f"{place} ")
        except ValueError as err:  # both the old and the new name
            raise ConfigError(one_line(err)) from None
    for old in old_names:
        body.pop(old)
    body.update(new)
    for warning in caught:
        if issubclass(warning.category, DeprecationWarning):
            notes.append(f"{warning.message} (the old name still works, for now)")


def _parse_methods(
    tables: Mapping[str, Any], notes: list[str], dtype: str = "float32"
) -> list[_MethodTable]:
    if not tables:
        raise ConfigError("[methods]: no methods; add e.g. [methods.gd]")
    known = ", ".join(sorted(OPTIMIZERS) + sorted(FLOWS))
    out = []
    for label, raw in tables.items():
        name = f"methods.{label}"
        if not _LABEL.match(label):
            raise ConfigError(f"[{name}]: a label is letters, digits, '_', '.', '+' or '-'")
        body = dict(table(f"[{name}]", raw))
        method = body.pop("method", label)
        if not isinstance(method, str) or (method not in OPTIMIZERS and method not in FLOWS):
            key = "method" if "method" in raw else None
            what = f"unknown method {fmt(method)}"
            if key is None:
                what += " (the label is the method unless `method = ...` is given)"
            raise fail(where(name, key), f"{what}; choose one of {known}")
        is_flow = method in FLOWS
        optimizer = body.pop("optimizer", None)
        if "optimizer" in raw and not is_flow:
            raise fail(where(name, "optimizer"),
                       f"only flows model an optimizer; {method!r} is an optimizer itself")
        if optimizer is not None:
            choice(where(name, "optimizer"), optimizer, sorted(OPTIMIZERS))
        try:
            accepted = method_options(method, optimizer)
        except ValueError as err:  # a flow that does not model this optimizer
            raise fail(where(name, "optimizer"), one_line(err)) from None

        integrator: dict[str, Any] = {}
        for key in _INTEGRATOR_KEYS:
            if key in body:
                if not is_flow:
                    raise fail(where(name, key), f"integrator options apply to flows only, "
                               f"and {method!r} is a discrete optimizer")
                integrator[key] = body.pop(key)
        if "solver" in integrator:
            choice(where(name, "solver"), integrator["solver"], SOLVERS)
        for key in ("rtol", "atol", "dt0"):
            if key in integrator:
                integrator[key] = positive_number(where(name, key), integrator[key])
                representable(where(name, key), integrator[key], dtype)
        if "max_steps" in integrator:
            max_steps = positive_int(where(name, "max_steps"), integrator["max_steps"])
            if max_steps > MAX_STEPS:
                raise fail(where(name, "max_steps"),
                           f"{max_steps} is more than the {MAX_STEPS:.0e} allowed")
            integrator["max_steps"] = max_steps

        _rename(f"[{name}]", body, accepted, notes)
        num_eigenvalues = None
        if "num_eigenvalues" not in accepted:  # else it is an option of the method
            num_eigenvalues = body.pop("num_eigenvalues", None)
        if num_eigenvalues is not None:
            num_eigenvalues = positive_int(where(name, "num_eigenvalues"), num_eigenvalues,
                                           minimum=0)
        reference = body.pop("reference", None)
        if reference is not None and not isinstance(reference, str):
            raise fail(where(name, "reference"), f"expected a method label, got {fmt(reference)}")
        start_from = body.pop("start_from", None)
        if start_from is not None:
            start_from = _parse_start_from(where(name, "start_from"), start_from, is_flow)

        fields = _option_fields(OPTIMIZERS[optimizer or default_optimizer(method)])
        if is_flow:
            fields.update(_option_fields(FLOWS[method]))
        options: dict[str, Any] = {}
        for key, value in body.items():
            if key not in accepted:
                takes = accepted | set(_METHOD_KEYS) | (set(_INTEGRATOR_KEYS) if is_flow else set())
                raise fail(where(name, key),
                           f"unknown key; {method!r} takes: {', '.join(sorted(takes))}")
            check_no_nesting(name, key, value)
            if key == "eigensolver":
                choice(where(name, key), value, EIGENSOLVERS)
                cls = EIGENSOLVERS[value]
                options[key] = None if cls is None else cls()
                continue
            field = fields.get(key)
            kinds = allowed_kinds(
                getattr(field, "type", None), getattr(field, "default", dataclasses.MISSING)
            )
            if kinds is None:
                kinds = {"int", "float", "bool", "list"}  # None by default: no strings
            check_kind(where(name, key), value, kinds)
            representable(where(name, key), value, dtype)
            if key in _OPTION_RANGES and is_number(value):
                ok, text = _OPTION_RANGES[key]
                if not ok(value):
                    raise fail(where(name, key), f"expected {text}, got {fmt(value)}")
                if not ok(in_dtype(value, dtype)):  # e.g. beta2 = 1 − 1e-9 is 1 in float32
                    raise fail(where(name, key), f"expected {text}, got {fmt(value)}, which "
                               f"is {in_dtype(value, dtype):g} in {dtype}")
            options[key] = value
        out.append(_MethodTable(
            label=label, name=method, optimizer=optimizer, options=options,
            integrator=Integrator(**integrator), num_eigenvalues=num_eigenvalues,
            reference=reference, start_from=start_from,
        ))
    return out


def _parse_start_from(place: str, value: Any, is_flow: bool) -> tuple[str, int]:
    """``start_from = { method = "<label of a discrete run>", step = k }``."""
    if not is_flow:
        raise fail(place, "only a flow takes over a run")
    if not isinstance(value, Mapping) or set(value) != {"method", "step"}:
        raise fail(place, f'expected a table {{ method = "<label>", step = <k> }}, '
                   f"got {fmt(value)}")
    if not isinstance(value["method"], str):
        raise fail(place, f"method: expected a method label, got {fmt(value['method'])}")
    return value["method"], positive_int(f"{place} step", value["step"], minimum=0)


# -------------------------------------------------------------------- building


def _with_seed(builder, kwargs: dict[str, Any], seed: int) -> dict[str, Any]:
    """``[run] seed`` seeds every builder that takes a seed and was not given one."""
    if "seed" in inspect.signature(builder).parameters and "seed" not in kwargs:
        return {**kwargs, "seed": seed}
    return kwargs


def build_problem(config: Config):
    """The `Problem` of a configuration. Call after the dtype has been applied.

    Whatever the builders reject (a missing or corrupt data file, a value out of
    range) is raised as a one-line `ConfigError`.
    """
    from ..problems import DATASETS, PROBLEMS

    kwargs = dict(config.problem)
    name = kwargs.pop("name")
    builder = PROBLEMS[name]
    if config.data is not None:
        data_kwargs = dict(config.data)
        data_name = data_kwargs.pop("name")
        data_builder = DATASETS[data_name]
        try:
            data = data_builder(**_with_seed(data_builder, data_kwargs, config.seed))
        except Exception as err:  # a missing file, a builder's rejection, whatever its type
            raise ConfigError(f"[data] {data_name}: {one_line(err)}") from None
        kwargs["data"] = data
    try:
        problem = builder(**_with_seed(builder, kwargs, config.seed))
    except Exception as err:
        raise ConfigError(f"[problem] {name}: {one_line(err)}") from None
    return problem


def _trace_once(problem, built) -> None:
    """Trace one step of the method without computing it: an option value that only
    fails inside traced code (a bad string, a negative size) fails here instead."""
    import equinox as eqx
    import jax.numpy as jnp

    from ..vector_fields.base import VectorField

    if isinstance(built, VectorField):
        eqx.filter_eval_shape(lambda field: field(0.0, field.initial_state(), None), built)
        return
    f, w0 = problem.flat_loss, problem.w0

    def step(rule):
        return rule.update(jnp.asarray(0), rule.init(f, w0), f, w0, w0)

    eqx.filter_eval_shape(step, built)


def _check_counts(label: str, method: Method, n: int) -> None:
    """A method's own eigenvector counts (the central flow's ``num_eigenvalues`` and
    ``guard``), when given, against the problem's number of parameters."""
    options = method.options
    k = options.get("num_eigenvalues")
    if is_number(k) and k > n:
        raise fail(where(f"methods.{label}", "num_eigenvalues"),
                   f"{k} is more than the problem's {n} parameters")
    guard = options.get("guard")
    if is_number(guard) and guard > 0:
        if k is None:  # the flow's default, at most n
            field = _option_fields(FLOWS[method.name]).get("num_eigenvalues")
            k = getattr(field, "default", 0)
        if min(k, n) + guard > n:
            raise fail(where(f"methods.{label}", "guard"),
                       f"{min(k, n)} + {guard} eigenvectors are more than the problem's "
                       f"{n} parameters")


def check_methods(config: Config, problem) -> None:
    """Check every method of the run against the problem: its tracked eigenvalues fit
    the problem, and it builds and traces one step (at the first learning rate)."""
    from ..linalg.eigen import LOBPCG
    from ..runs import check_take_over

    spec = config.run
    n = problem.num_params
    for label, method in spec.methods.items():
        tracking = spec.tracking_of(label)
        k = tracking.num_eigenvalues
        place = where("run", "num_eigenvalues") if method.tracking is None else (
            where(f"methods.{label}", "num_eigenvalues"))
        if k > n:
            raise ConfigError(f"{place}: {k} is more than the problem's {n} parameters")
        if isinstance(tracking.eigensolver, LOBPCG) and 5 * k >= n:
            raise ConfigError(f"{place}: LOBPCG needs 5 × {k} < {n} parameters; "
                              "use eigensolver = \"dense\"")
        _check_counts(label, method, n)
        if label in spec.start_from:
            try:
                check_take_over(problem, spec, label)
            except ConfigError as err:
                raise ConfigError(f"[methods.{label}] {err}") from None
        try:
            _trace_once(problem, method.build(problem, spec.lrs[0]))
        except Exception as err:  # whatever the method rejects, at build or trace time
            raise ConfigError(f"[methods.{label}]: {one_line(err)}") from None
