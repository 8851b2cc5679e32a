"""numpydoc sections on the public API.

For every public callable (the names in ``__all__`` of the modules below, and the listed public
methods of their classes) the docstring must have:

* a ``Parameters`` section naming every parameter of the signature (``self`` / ``cls`` left out;
  ``*args`` / ``**kwargs`` by their starred name); for a class the constructor's parameters go
  in the class docstring, and a dataclass documents its fields in ``Attributes`` instead;
* a ``Returns`` (or ``Yields``) section, for every function and method but the few in
  ``RETURNS_NONE`` (a method returning ``self``, such as ``fit``, still documents it);
* a ``Raises`` section for the callables that refuse bad input: every one whose own source has a
  ``raise`` statement, and the ones in ``MUST_RAISE`` (the operators and the estimators' ``fit``
  / ``ate``, which raise through shared checks);
* an ``Attributes`` section for the estimator classes (their fitted attributes).

A section is a header line followed by a line of dashes of the same length (numpydoc).  The
``Examples`` of these docstrings are run as doctests.
"""

from __future__ import annotations

import dataclasses
import doctest
import importlib
import inspect
import re
import textwrap

import pytest

# module -> names of __all__ outside the documented public API (constants, result containers and
# the build probes are documented by their modules)
MODULES = {
    "cina_ext.ops": {
        "default_max_iter",
        "QPResult",
        "BalanceResult",
        "has_extension",
        "has_cuda_kernels",
        "extension_error",
    },
    "cina_ext.reference": {"default_max_iter", "QPResult", "BalanceResult"},
    "cina_ext.estimators": {"EstimatorSummary"},
    "cina_ext.diagnostics": set(),
    "cina_ext.data": set(),
    "cina_ext.models": set(),
    "cina_ext.training": set(),
}

ESTIMATOR_METHODS = ("fit", "ate", "ate_interval", "balance", "summary")
# class name -> public methods that are checked (the class docstring itself always is)
METHODS = {
    "DifferenceInMeans": ESTIMATOR_METHODS,
    "IPW": ESTIMATOR_METHODS,
    "SelfNormalizedIPW": ESTIMATOR_METHODS,
    "DoubleML": ESTIMATOR_METHODS,
    "KernelBalancing": ESTIMATOR_METHODS,
    "CInA": ESTIMATOR_METHODS,
    "CInAZeroShot": ESTIMATOR_METHODS + ("estimate_many", "from_pretrained"),
    "BalanceReport": ("rows", "to_dict", "to_json", "summary_frame"),
    "CausalDataset": ("truth", "to_frame", "subsample"),
    "ERSCM": ("adjacency", "describe", "draw_exogenous", "propagate", "sample", "monte_carlo_ate", "dataset"),
    "CInAZeroShotModel": (
        "forward",
        "weights",
        "loss",
        "balance_weights",
        "balance_objective",
        "kernel_gamma",
        "standardise",
        "objective",
        "lam_abs",
        "estimand_index",
    ),
    "KeyNet": ("forward",),
    "ZeroShotConfig": ("from_any", "validate"),
}
ESTIMATORS = {name for name, methods in METHODS.items() if methods[: len(ESTIMATOR_METHODS)] == ESTIMATOR_METHODS}

# qualified names that return None (documented as such, so no Returns section)
RETURNS_NONE = {"ZeroShotConfig.validate"}
# qualified names that raise on bad input through helpers (no ``raise`` in their own source)
MUST_RAISE = {
    "cina_ext.ops.attention_hinge",
    "cina_ext.ops.qp_solve",
    "cina_ext.ops.dual_solve",
    "cina_ext.ops.attention_hinge_packed",
    "cina_ext.ops.dual_solve_packed",
    "cina_ext.ops.qp_solve_packed",
    "cina_ext.ops.offsets_from_lengths",
    "cina_ext.ops.resolve_backend",
    "cina_ext.reference.attention_hinge",
    "cina_ext.reference.qp_solve",
    "cina_ext.reference.dual_solve",
    "cina_ext.reference.attention_hinge_packed",
    "cina_ext.reference.dual_solve_packed",
    "cina_ext.reference.qp_solve_packed",
    "cina_ext.reference.gram",
    "cina_ext.reference.readout_weights",
    "cina_ext.diagnostics.balance_table",
} | {f"cina_ext.estimators.{cls}.{m}" for cls in ESTIMATORS for m in ("fit", "ate", "ate_interval")}

_HEADER = re.compile(r"^(?P<title>[A-Z][A-Za-z ]+)\n(?P<rule>-+)\s*$", re.M)


def sections(doc: str) -> dict:
    """``{title: body}`` of the numpydoc sections of a (cleaned) docstring."""
    out = {}
    matches = [m for m in _HEADER.finditer(doc) if len(m.group("rule")) == len(m.group("title"))]
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(doc)
        out[m.group("title")] = doc[m.end() : end]
    return out


def documented_names(body: str) -> set:
    """Names of the entries ``name : type`` (or ``a, b : type``, or a bare ``name``) of a section."""
    names = set()
    for line in body.splitlines():
        if not line or line[0].isspace():
            continue
        head = line.split(" : ")[0]
        for n in head.split(","):
            names.add(n.strip())
    return names


def _targets():
    for modname, excluded in MODULES.items():
        mod = importlib.import_module(modname)
        for name in mod.__all__:
            if name in excluded:
                continue
            obj = getattr(mod, name)
            if not callable(obj) or isinstance(obj, dict):
                continue  # constants
            yield f"{modname}.{name}", obj, None
            if inspect.isclass(obj):
                for meth in METHODS.get(name, ()):
                    yield f"{modname}.{name}.{meth}", getattr(obj, meth), obj


TARGETS = list(_targets())


def _params(obj, owner) -> list:
    fn = obj.__init__ if inspect.isclass(obj) else obj
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return []
    out = []
    for i, (name, prm) in enumerate(sig.parameters.items()):
        if name.startswith("_"):
            continue  # private tuning knobs (e.g. _inner_min_units)
        if i == 0 and name in ("self", "cls") and (inspect.isclass(obj) or owner is not None):
            continue
        if prm.kind is prm.VAR_POSITIONAL:
            name = "*" + name
        elif prm.kind is prm.VAR_KEYWORD:
            name = "**" + name
        out.append(name)
    return out


def _raises_in_source(obj) -> bool:
    """Whether the callable's own source (a class: its ``__init__`` / ``__post_init__``) raises."""
    if inspect.isclass(obj):
        parts = [vars(obj)[n] for n in ("__init__", "__post_init__") if n in vars(obj)]
    else:
        parts = [obj]
    for part in parts:
        try:
            src = textwrap.dedent(inspect.getsource(part))
        except (OSError, TypeError):  # generated (dataclass __init__) or builtin
            continue
        if re.search(r"^\s+raise\b", src, re.M):
            return True
    return False


def check(qualname: str, obj, owner) -> list:
    """The rules above for one callable; returns the list of problems."""
    doc = inspect.getdoc(obj)
    if not doc:
        return [f"{qualname}: no docstring"]
    secs = sections(doc)
    problems = []
    short = qualname.split(".", 2)[-1] if owner is None else f"{owner.__name__}.{qualname.rsplit('.', 1)[1]}"
    is_class = inspect.isclass(obj)
    params = _params(obj, owner)
    if is_class and dataclasses.is_dataclass(obj):
        if "Attributes" not in secs:
            problems.append(f"{qualname}: a dataclass needs an Attributes section (its fields)")
        else:
            missing = {f.name for f in dataclasses.fields(obj)} - documented_names(secs["Attributes"])
            if missing:
                problems.append(f"{qualname}: fields not in Attributes: {sorted(missing)}")
    elif params:
        if "Parameters" not in secs:
            problems.append(f"{qualname}: no Parameters section (signature has {params})")
        else:
            missing = set(params) - documented_names(secs["Parameters"])
            if missing:
                problems.append(f"{qualname}: parameters not documented: {sorted(missing)}")
    if not is_class and short not in RETURNS_NONE and not ({"Returns", "Yields"} & set(secs)):
        problems.append(f"{qualname}: no Returns (or Yields) section")
    if (qualname in MUST_RAISE or _raises_in_source(obj)) and "Raises" not in secs:
        problems.append(f"{qualname}: raises on bad input but has no Raises section")
    if is_class and obj.__name__ in ESTIMATORS and "Attributes" not in secs:
        problems.append(f"{qualname}: an estimator class documents its fitted Attributes")
    return problems


def test_sections_parser():
    doc = "Summary.\n\nParameters\n----------\nx, y : int\n    Things.\n**kwargs\n    More.\n\nReturns\n-------\nint\n"
    secs = sections(doc)
    assert set(secs) == {"Parameters", "Returns"}
    assert documented_names(secs["Parameters"]) == {"x", "y", "**kwargs"}
    assert sections("Summary.\n\nReturns\n----\nint\n") == {}  # the rule must match the title


def test_the_walk_covers_the_public_api():
    names = {q for q, _, _ in TARGETS}
    for q in (
        "cina_ext.ops.attention_hinge",
        "cina_ext.ops.resolve_backend",
        "cina_ext.reference.gram",
        "cina_ext.estimators.CInAZeroShot.from_pretrained",
        "cina_ext.diagnostics.BalanceReport.to_dict",
        "cina_ext.data.load_ihdp",
        "cina_ext.models.CInAZeroShotModel.standardise",
        "cina_ext.training.train_zero_shot",
    ):
        assert q in names
    assert len(TARGETS) > 100


@pytest.mark.parametrize("qualname,obj,owner", TARGETS, ids=[t[0] for t in TARGETS])
def test_numpydoc_sections(qualname, obj, owner):
    problems = check(qualname, obj, owner)
    assert not problems, "\n".join(problems)


def test_a_missing_section_is_caught():
    def f(x):
        """Summary.

        Parameters
        ----------
        x : int
            A number.
        """
        if x < 0:
            raise ValueError("negative")
        return x

    problems = check("f", f, None)
    assert any("Returns" in p for p in problems) and any("Raises" in p for p in problems)


def _examples():
    seen = set()
    for qualname, obj, _ in TARGETS:
        doc = getattr(obj, "__doc__", None)
        if doc and ">>>" in doc and id(obj) not in seen:
            seen.add(id(obj))
            yield qualname, obj


EXAMPLES = list(_examples())


@pytest.mark.parametrize("qualname,obj", EXAMPLES, ids=[e[0] for e in EXAMPLES])
def test_examples_run(qualname, obj):
    import torch

    torch.manual_seed(0)
    finder = doctest.DocTestFinder(recurse=False)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for t in finder.find(obj, qualname, globs={}):
        runner.run(t)
    assert runner.failures == 0, f"{runner.failures} failing example(s) in {qualname} (run with -s to see them)"
