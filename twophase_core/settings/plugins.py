"""Models and datasets from outside the package: by registered name or by import path.

A `model` or `dataset` setting names a built-in (science/models.py, science/data.py), a name a package registers
under the entry-point group `twophase.models` or `twophase.datasets`, or an import path `MODULE:CALLABLE`. This
module is the one place that turns such a name into its callable: it imports it, checks it (one ConfigError line
naming what is wrong), gives its identity for the config's hash, and loads and checks a loader's arrays.

- A model factory is called as `factory(in_shape, classes, **options)` and returns a `torch.nn.Module`; `width`
  and `dropout` are passed as keywords only when it accepts them.
- A dataset loader is called as `loader(root)` (the `data_root` setting) and returns `(x_train, y_train, x_test,
  y_test)` as numpy arrays or torch tensors: inputs floats, labels whole numbers 0..classes-1.
- `torchvision:NAME` is a classification model of torchvision (`torchvision.models.list_models()`), untrained,
  with `num_classes` set and its first convolution taking the input's channels; its identity is torchvision's
  version.

Identity (`identity`): the resolved `MODULE:CALLABLE` and either the version the plugin declares
(`__twophase_version__` on the callable, else on its module) or the sha256 of the source files of the named
module and of the module defining the callable, read when first imported in this process (so the hash always
describes the code that runs). What it does not cover: docs/science.md, "Your own model and data".

Inside a Streamlit script run (the app: every page, whatever widget the text came from) an import path is refused
(`in_app`): the app may be open to a network, and importing a module runs its code; registered names are what
its administrator installed. Torch-free and Streamlit-free at import: a plugin's own module imports torch.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import re
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType
from typing import Any

from twophase_core.settings import spec
from twophase_core.settings.spec import ConfigError, shown

GROUPS = {"model": "twophase.models", "dataset": "twophase.datasets"}
# the built-ins, in the order the CLI and the form offer them, with their line of help (`twophase models`)
BUILTIN: dict[str, dict[str, str]] = {
    "dataset": {
        "digits": "scikit-learn's 8x8 digits: 1437 train / 360 test images, 10 classes (ships with scikit-learn)",
        "mnist1d": "MNIST-1D (1 x 40), generated offline by the mnist1d package: 4000 train / 1000 test, 10 classes",
        "cifar10": "CIFAR-10 (3 x 32 x 32) from data_root/cifar-10-batches-py: 50000 train / 10000 test",
        "synthetic": "tiny 3 x 8 x 8 Gaussian clusters, 4 classes (256 train / 128 test): for tests",
        "mnist": "MNIST (1 x 28 x 28) from data_root/MNIST/raw (torchvision's layout): 60000 train / 10000 test",
        "fashion_mnist": "Fashion-MNIST (1 x 28 x 28) from data_root/FashionMNIST/raw: 60000 train / 10000 test",
        "cifar100": "CIFAR-100, fine labels (3 x 32 x 32) from data_root/cifar-100-python: 50000 / 10000, 100 classes",
        "svhn": "SVHN digits (3 x 32 x 32) from data_root/{train,test}_32x32.mat: 73257 train / 26032 test",
    },
    "model": {
        "mlp": "two hidden ReLU layers of 128*width units",
        "cnn": "three conv-BN-ReLU layers (32, 32, 64 times width), then linear; 1-D or 2-D by the input",
        "resnet20": "CIFAR ResNet-20 (16/32/64 times width channels); 2-D images",
        "vgg16_bn": "VGG-16 with BatchNorm, head 512 -> classes; 2-D images",
        "vgg16_bn_fc": "VGG-16 with BatchNorm and the 4096-4096 head with dropout; 2-D images",
    },
}
CALLS = {"model": "factory(in_shape, classes, width=..., dropout=...) -> torch.nn.Module",
         "dataset": "loader(root) -> (x_train, y_train, x_test, y_test)"}
NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")  # a registered name (a CLI value, a form option)
PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_]"
                  r"[A-Za-z0-9_]*)*", re.ASCII)
VERSION_ATTR = "__twophase_version__"
TORCHVISION = "torchvision:"

REFUSAL = ("is an import path, which the app does not run (importing a module runs its code, and the app may be "
           "open to a network): choose a registered {0} (twophase {0}s lists them), or run it from the command line "
           "or a notebook")
_LOCK = threading.RLock()


def in_app() -> bool:
    """Whether this thread runs a Streamlit script (a page of the app, wherever its text came from: a form, a
    sweep's lines, a resubmitted record): there an import path is a ConfigError, and registered names still work.
    Asked of Streamlit only where it is imported already."""
    if "streamlit" not in sys.modules:
        return False
    try:
        from streamlit.runtime.scriptrunner import get_script_run_ctx
    except ImportError:  # another Streamlit, without it: nothing runs a page here
        return False
    return get_script_run_ctx(suppress_warning=True) is not None


def is_import_path(name: str) -> bool:
    return ":" in name


@dataclass(frozen=True)
class Plugin:
    """A resolved model factory or dataset loader."""

    what: str  # "model" or "dataset"
    name: str  # as the config holds it
    target: str  # the MODULE:CALLABLE it resolves to
    origin: str  # "import path" or "entry point of <distribution>"
    obj: Callable[..., Any]
    module: ModuleType
    identity: dict[str, str]  # what the config's hash holds of it
    keywords: frozenset[str]  # of width and dropout, those the callable accepts

    @property
    def help(self) -> str:
        doc = inspect.getdoc(self.obj) or ""
        return " ".join(doc.split("\n\n")[0].split()) or "(no docstring)"


# ---------------------------------------------------------------------------------------------
# Registered names


def registered(what: str) -> dict[str, EntryPoint]:
    """Entry points of `what`'s group by name: those with a usable name (lowercase letters, digits, _ and -) that
    is not a built-in one (a built-in keeps its name), first one per name. Read from installed metadata, nothing
    imported."""
    out: dict[str, EntryPoint] = {}
    for ep in entry_points(group=GROUPS[what]):
        if NAME.fullmatch(ep.name) and ep.name not in BUILTIN[what] and ep.name not in out:
            out[ep.name] = ep
    return out


def names(what: str) -> list[str]:
    """What the app's form offers: the built-ins, then the registered names."""
    return [*BUILTIN[what], *sorted(registered(what))]


def catalogue(what: str) -> list[tuple[str, str, str]]:
    """(name, origin, one line of help) of everything available: built-ins, then every entry point (one that
    cannot be used says why on its line). Imports each entry point's module, for its docstring."""
    rows = [(n, "built-in", h) for n, h in BUILTIN[what].items()]
    usable = registered(what)
    for ep in sorted(entry_points(group=GROUPS[what]), key=lambda e: e.name):
        origin = f"entry point of {ep.dist.name if ep.dist else 'an unknown package'} ({ep.value})"
        if usable.get(ep.name) != ep:
            why = ("shadowed by the built-in of that name" if ep.name in BUILTIN[what] else
                   "its name is not lowercase letters, digits, _ and -" if not NAME.fullmatch(ep.name)
                   else "another package registers this name first")
            rows.append((ep.name, origin, f"(not offered: {why})"))
            continue
        try:
            rows.append((ep.name, origin, resolve(what, ep.name).help))
        except ConfigError as e:
            rows.append((ep.name, origin, f"(cannot be used: {e.allowed})"))
    return rows


# ---------------------------------------------------------------------------------------------
# Resolution


_RESOLVED: dict[tuple[str, str], Plugin] = {}


def resolve(what: str, name: str) -> Plugin:
    """The plugin `name` names (a registered name or MODULE:CALLABLE), imported and checked; a ConfigError naming
    `what` and what is wrong otherwise. Cached per process while its module is the one in sys.modules (a module
    reloaded in a notebook is resolved, and digested, again)."""
    if what not in GROUPS:
        raise ValueError(what)
    if isinstance(name, str) and is_import_path(name) and in_app():
        raise ConfigError(what, name, REFUSAL.format(what))
    with _LOCK:
        cached = _RESOLVED.get((what, name))
        if cached is not None and (cached.origin == "torchvision" or (
                sys.modules.get(cached.module.__name__) is cached.module
                and _attribute(cached.module, cached.target.split(":", 1)[1]) is cached.obj)):
            return cached
        plugin = _resolve(what, name)
        _RESOLVED[what, name] = plugin
        return plugin


def _resolve(what: str, name: str) -> Plugin:
    if not isinstance(name, str) or not name:
        raise ConfigError(what, name, _choices(what))
    if what == "model" and name.startswith(TORCHVISION):
        return _torchvision(name)
    if is_import_path(name):
        if not PATH.fullmatch(name):
            raise ConfigError(what, name, "write an import path as MODULE:CALLABLE, e.g. mypkg.nets:small_cnn")
        target, origin = name, "import path"
    else:
        ep = registered(what).get(name)
        if ep is None:
            raise ConfigError(what, name, _choices(what))
        target = ep.value.split("[", 1)[0].replace(" ", "")
        origin = f"entry point of {ep.dist.name if ep.dist else 'an unknown package'}"
        if not PATH.fullmatch(target):
            raise ConfigError(what, name, f"its entry point {ep.value!r} is not MODULE:CALLABLE")
    module_name, attr = target.split(":", 1)
    module = _import(what, name, module_name)
    obj = _attribute(module, attr)
    if obj is None:
        raise ConfigError(what, name, f"module {module_name} has no attribute {attr!r}")
    if not callable(obj):
        raise ConfigError(what, name, f"{target} is a {type(obj).__name__}, not a callable: give a {CALLS[what]}")
    keywords = _check_signature(what, name, target, obj)
    return Plugin(what, name, target, origin, obj, module, _identity(what, name, target, module, obj), keywords)


def _torchvision(name: str) -> Plugin:
    """torchvision's classification model NAME as a factory: num_classes set, the first Conv2d rebuilt for the
    input's channels where they differ (the same kernel, stride, padding and bias)."""
    arch = name[len(TORCHVISION):]
    try:
        import torchvision
        from torchvision import models
    except Exception as e:  # noqa: BLE001 - a torchvision that does not import beside this torch, named
        raise ConfigError("model", name, f"torchvision does not import here: {one_line(e)}") from None
    if arch not in models.list_models(module=models):
        raise ConfigError("model", name, f"torchvision {torchvision.__version__} has no classification model "
                          f"{arch!r}: e.g. resnet18, vgg11_bn, mobilenet_v3_small (torchvision.models.list_models())")
    builder = models.get_model_builder(arch)

    def factory(in_shape: tuple[int, ...], classes: int) -> Any:
        from torch import nn

        if len(in_shape) != 3:
            raise ConfigError("model", name, f"torchvision's models take 2-D images (C, H, W), not inputs of shape "
                              f"{tuple(in_shape)}")
        model = builder(weights=None, num_classes=classes)
        for parent in model.modules():
            for child_name, conv in parent.named_children():
                if isinstance(conv, nn.Conv2d):
                    if conv.in_channels != in_shape[0]:
                        same: dict[str, Any] = {k: getattr(conv, k) for k in (
                            "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "padding_mode")}
                        setattr(parent, child_name, nn.Conv2d(in_shape[0], bias=conv.bias is not None, **same))
                    return model
        return model

    factory.__doc__ = f"torchvision's {arch}, untrained, its first convolution taking the input's channels"
    return Plugin("model", name, name, "torchvision", factory, models,
                  {"target": name, "version": f"torchvision {torchvision.__version__}"}, frozenset())


def _attribute(module: ModuleType, attr: str) -> Any:
    """module.a.b for attr 'a.b', or None."""
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
    return obj


def _choices(what: str) -> str:
    also = ", torchvision:NAME (a torchvision model)" if what == "model" else ""
    return (f"choose one of {', '.join(names(what))} (twophase {what}s lists them){also}, or give an import path "
            f"MODULE:CALLABLE to a {CALLS[what]}")


def _where(e: BaseException) -> str:
    """' (file:line)' of the innermost frame of an exception's traceback: the line a plugin's author looks at."""
    if isinstance(e, SyntaxError):  # its message names the file and line already
        return ""
    frames = [f for f in traceback.extract_tb(e.__traceback__) if not f.filename.startswith("<frozen")]
    return f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""


def one_line(e: BaseException) -> str:
    """'ValueError: what it said (file:line)', whitespace folded, cut to a line."""
    said = " ".join(str(e).split())
    return f"{type(e).__name__}{': ' if said else ''}{said[:200]}{_where(e)}"


def _import(what: str, name: str, module_name: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise ConfigError(what, name, f"no module named {e.name!r} here: install its package, or put the folder "
                              "holding it on PYTHONPATH (jobs and Ray tasks need it there too)") from None
        raise ConfigError(what, name, f"importing {module_name} failed: {one_line(e)}") from None
    except Exception as e:  # noqa: BLE001 - whatever the module raises, named in one line
        raise ConfigError(what, name, f"importing {module_name} failed: {one_line(e)}") from None


def _check_signature(what: str, name: str, target: str, obj: Callable[..., Any]) -> frozenset[str]:
    """The callable takes (in_shape, classes) or (root) positionally; which of width and dropout it accepts."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):  # a builtin without a signature: called as documented, and judged then
        return frozenset()
    args: tuple[object, ...] = ((1, 8), 2) if what == "model" else ("",)
    try:
        sig.bind(*args)
    except TypeError as e:
        raise ConfigError(what, name, f"{target}{sig} cannot be called as {CALLS[what].split(' ->')[0]} ({e})"
                          ) from None
    if what != "model":
        return frozenset()
    params = sig.parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return frozenset({"width", "dropout"})
    return frozenset(p.name for p in params if p.name in ("width", "dropout")
                     and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def _identity(what: str, name: str, target: str, module: ModuleType, obj: Callable[..., Any]) -> dict[str, str]:
    version = getattr(obj, VERSION_ATTR, None)
    if version is None:
        version = getattr(module, VERSION_ATTR, None)
    if version is not None:
        return {"target": target, "version": str(version)}
    defining = sys.modules.get(getattr(obj, "__module__", "") or "")
    h = hashlib.sha256()
    for mod in sorted({module, *([defining] if defining else [])}, key=lambda m: m.__name__):
        file = getattr(mod, "__file__", None)
        if not file:
            raise ConfigError(what, name, f"module {mod.__name__} has no source file to digest for the results' "
                              f"key: put it in a .py file, or declare {VERSION_ATTR} = '1' on it")
        try:
            with open(file, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ConfigError(what, name, f"the source of {mod.__name__} ({file}) cannot be read for the results' "
                              f"key: {e.strerror or e}") from None
        h.update(f"{mod.__name__}\0{len(data)}\0".encode())
        h.update(data)
    return {"target": target, "source": h.hexdigest()[:20]}


def identity(what: str, name: str) -> dict[str, str]:
    """What the config's hash holds of a non-built-in model or dataset (see the module's docstring)."""
    return resolve(what, name).identity


def imported_modules() -> list[str]:
    """Modules resolved from import paths in this process: a Ray task must find them too (the registry hands
    their folders on, as it does for experiment kinds)."""
    with _LOCK:
        return sorted({p.module.__name__ for p in _RESOLVED.values() if p.origin == "import path"})


# ---------------------------------------------------------------------------------------------
# Models


def call_factory(name: str, in_shape: tuple[int, ...], classes: int, width: float, dropout: float) -> Any:
    """`factory(in_shape, classes, [width=], [dropout=])`, checked to be a torch.nn.Module with trainable
    parameters; whatever it raises is one ConfigError line naming the model. The caller seeds torch."""
    import torch

    p = resolve("model", name)
    options = {k: v for k, v in (("width", width), ("dropout", dropout)) if k in p.keywords}
    try:
        model = p.obj(tuple(in_shape), int(classes), **options)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever the factory raises, named in one line
        raise ConfigError("model", name, f"{p.target}(in_shape={tuple(in_shape)}, classes={classes}) failed: "
                          f"{one_line(e)}") from None
    if not isinstance(model, torch.nn.Module):
        raise ConfigError("model", name, f"{p.target} returned a {type(model).__name__}, not a torch.nn.Module")
    if not any(q.requires_grad for q in model.parameters()):
        raise ConfigError("model", name, f"{p.target} returned a module with no trainable parameters")
    return model


_TRIED: dict[tuple[object, ...], None] = {}


def check_model(name: str, in_shape: tuple[int, ...], classes: int, width: float, dropout: float) -> None:
    """Build the model once on the CPU (global RNG untouched) and run two zero inputs through it in eval mode:
    its output must be floats of shape (2, classes). Cached per process."""
    p = resolve("model", name)
    key = (name, tuple(sorted(p.identity.items())), id(p.module), tuple(in_shape), classes, width, dropout)
    if key in _TRIED:
        return
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = call_factory(name, in_shape, classes, width, dropout)
        model.eval()
        try:
            with torch.no_grad():
                out = model(torch.zeros((2, *in_shape)))
        except Exception as e:  # noqa: BLE001 - whatever the forward raises, named in one line
            raise ConfigError("model", name, f"{p.target}'s forward on inputs of shape {(2, *in_shape)} failed: "
                              f"{one_line(e)}") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, classes) or not out.is_floating_point():
        got = f"shape {tuple(out.shape)} ({out.dtype})" if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError("model", name, f"{p.target} must map (N, *{tuple(in_shape)}) to logits of shape "
                          f"(N, {classes}) for {classes} classes; it gave {got} for N = 2")
    _TRIED[key] = None


# ---------------------------------------------------------------------------------------------
# Datasets


@dataclass(frozen=True)
class Arrays:
    """A loader's output, checked: inputs float32 (N, ...), labels int64 in 0..classes-1."""

    x_train: Any  # numpy arrays (numpy is imported only when a dataset is loaded)
    y_train: Any
    x_test: Any
    y_test: Any
    classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.x_train.shape[1:])


SPLITS = ("x_train", "y_train", "x_test", "y_test")
_LOADED: dict[tuple[object, ...], Arrays] = {}


def _as_numpy(name: str, split: str, v: object) -> Any:
    import numpy as np

    torch = sys.modules.get("torch")
    if torch is not None and isinstance(v, torch.Tensor):
        return v.detach().cpu().numpy()
    if isinstance(v, np.ndarray):
        return v
    raise ConfigError("dataset", name, f"{split} is a {type(v).__name__}: give numpy arrays or torch tensors")


def check_arrays(name: str, out: object) -> Arrays:
    """A loader's return value checked and converted (float32 inputs, int64 labels), or one ConfigError line
    naming the split and what is wrong: not four arrays, inputs not floats, labels not whole numbers, shapes
    that disagree, labels out of range, NaN or infinite inputs, an empty split."""
    import numpy as np

    if not isinstance(out, tuple | list) or len(out) != 4:
        got = f"{len(out)} values" if isinstance(out, tuple | list) else f"a {type(out).__name__}"
        raise ConfigError("dataset", name, f"the loader must return (x_train, y_train, x_test, y_test); it gave {got}")
    xtr, ytr, xte, yte = (_as_numpy(name, s, v) for s, v in zip(SPLITS, out, strict=True))
    for split, x in (("x_train", xtr), ("x_test", xte)):
        if not np.issubdtype(x.dtype, np.floating):
            raise ConfigError("dataset", name, f"{split} has dtype {x.dtype}: inputs must be floats (e.g. x / 255 "
                              "for bytes)")
        if x.ndim < 2 or len(x) == 0:
            raise ConfigError("dataset", name, f"{split} has shape {x.shape}: give (N, features...) with N >= 1")
        if not np.isfinite(x).all():
            raise ConfigError("dataset", name, f"{split} holds NaN or infinite values")
    if xtr.shape[1:] != xte.shape[1:]:
        raise ConfigError("dataset", name, f"x_train's points have shape {xtr.shape[1:]} but x_test's {xte.shape[1:]}")
    for split, y, x in (("y_train", ytr, xtr), ("y_test", yte, xte)):
        if not np.issubdtype(y.dtype, np.integer):
            raise ConfigError("dataset", name, f"{split} has dtype {y.dtype}: labels are whole numbers 0..classes-1")
        if y.shape != (len(x),):
            raise ConfigError("dataset", name, f"{split} has shape {y.shape} for {len(x)} inputs: give one label per "
                              "input, shape (N,)")
        if y.min() < 0:
            raise ConfigError("dataset", name, f"{split} holds label {int(y.min())}: labels are 0..classes-1")
    classes = int(ytr.max()) + 1
    if classes < 2:
        raise ConfigError("dataset", name, "y_train holds one class only: give at least two")
    if yte.max() >= classes:
        raise ConfigError("dataset", name, f"y_test holds label {int(yte.max())}, out of range: y_train's labels are "
                          f"0..{classes - 1}")
    if len(xtr) < 2:
        raise ConfigError("dataset", name, "x_train needs at least two points")
    return Arrays(np.ascontiguousarray(xtr, dtype=np.float32), np.ascontiguousarray(ytr, dtype=np.int64),
                  np.ascontiguousarray(xte, dtype=np.float32), np.ascontiguousarray(yte, dtype=np.int64), classes)


def load_dataset(name: str, root: str) -> Arrays:
    """`loader(root)`, checked (`check_arrays`); loaded once per process for each root and version of its code."""
    p = resolve("dataset", name)
    key = (name, root, tuple(sorted(p.identity.items())), id(p.module))
    with _LOCK:
        if key in _LOADED:
            return _LOADED[key]
        try:
            out = p.obj(root)
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001 - whatever the loader raises, named in one line
            raise ConfigError("dataset", name, f"{p.target}({shown(root)}) failed: {one_line(e)}") from None
        arrays = check_arrays(name, out)
        while len(_LOADED) >= 2:
            _LOADED.pop(next(iter(_LOADED)))
        _LOADED[key] = arrays
        return arrays


def forget() -> None:
    """Drop every resolved plugin, tried model and loaded dataset of this process (tests; a notebook that
    edited a plugin and reloaded it needs nothing: a reloaded module is seen)."""
    with _LOCK:
        _RESOLVED.clear()
        _TRIED.clear()
        _LOADED.clear()


spec.PLUGIN_RESOLVER[:] = [resolve]  # spec.check resolves plugin names through this module
