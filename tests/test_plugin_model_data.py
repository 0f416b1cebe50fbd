"""A model and a dataset from outside the package, by import path (MODULE:CALLABLE) or by registered name (the
example package's entry points: examples/twophase-example-plugin, installed by make's install step): validation
names what is wrong in one line (exit 2); the keys hold the plugin's code, so an edit is never served stale;
everything downstream runs on them: chaos, cone, a sweep, a job, the app's form. (Ray: test_ray.py.)

Oracles: the control run (eps = 0: C = B = D = 0 exactly), kernels from plain autograd Jacobians built here, the
loader's own arrays, and hashes computed by another process from the same files."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PLUGINS
from streamlit.testing.v1 import AppTest

from twophase_core.execution.jobs import JobManager
from twophase_core.execution.run import run_experiment
from twophase_core.experiments.presets import preset
from twophase_core.experiments.result import load_result
from twophase_core.interfaces.cli import main
from twophase_core.settings import config as conf
from twophase_core.settings import plugins
from twophase_core.storage.store import Store

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "twophase-example-plugin"
APP = str(ROOT / "app.py")
MODEL, DATA = "twophase_example_plugin.models:tanh_mlp", "twophase_example_plugin.data:spirals"
ENV = {"PYTHONPATH": os.pathsep.join(p for p in (str(EXAMPLE), str(PLUGINS), os.environ.get("PYTHONPATH", "")) if p)}


@pytest.fixture(autouse=True)
def on_path(monkeypatch):
    """The example and tests/plugins importable here (as PYTHONPATH makes them in a subprocess), and every plugin
    forgotten after the test."""
    monkeypatch.syspath_prepend(str(EXAMPLE))
    monkeypatch.syspath_prepend(str(PLUGINS))
    yield
    plugins.forget()


def _cli(*args: str, cache: Path, cwd: Path | None = None, exe: list[str] | None = None
         ) -> subprocess.CompletedProcess:
    return subprocess.run([*(exe or [sys.executable, "-m", "twophase_core"]), *args, "--cache-dir", str(cache)],
                          capture_output=True, text=True, env={**os.environ, **ENV}, timeout=300, cwd=cwd)


def _tiny(kind: str, **changes: object) -> conf.ExperimentConfig:
    return conf.replace(preset("tiny", kind), **{"model": "model_data:with_width", "dataset": "model_data:blobs",
                                                 **changes})


@pytest.mark.parametrize(("flag", "value", "needle"), [
    ("--model", "no_such_module:net", "no module named 'no_such_module' here"),
    ("--model", "model_data:missing", "module model_data has no attribute 'missing'"),
    ("--model", "model_data:NOT_CALLABLE", "is a int, not a callable"),
    ("--model", "model_data:no_arguments", "cannot be called as factory(in_shape, classes"),
    ("--model", "model_data:returns_a_list", "returned a list, not a torch.nn.Module"),
    ("--model", "model_data:wrong_logits", "logits of shape (N, 3) for 3 classes; it gave shape (2, 4)"),
    ("--model", "model_data:raises", "RuntimeError: this factory is broken on purpose"),
    ("--model", "broken_import:net", "importing broken_import failed: RuntimeError: this module is broken"),
    ("--model", "a b:c", "write an import path as MODULE:CALLABLE"),
    ("--model", "transformer", "choose one of mlp, cnn, resnet20, vgg16_bn, vgg16_bn_fc"),
    ("--dataset", "model_data:ints_as_inputs", "x_train has dtype int64: inputs must be floats"),
    ("--dataset", "model_data:float_labels", "y_train has dtype float32: labels are whole numbers"),
    ("--dataset", "model_data:label_out_of_range", "y_test holds label 5, out of range: y_train's labels are 0..2"),
    ("--dataset", "model_data:negative_label", "y_train holds label -1"),
    ("--dataset", "model_data:nan_inputs", "x_test holds NaN or infinite values"),
    ("--dataset", "model_data:shapes_disagree", "x_train's points have shape (2, 5) but x_test's (2, 4)"),
    ("--dataset", "model_data:labels_short", "y_train has shape (95,) for 96 inputs"),
    ("--dataset", "model_data:three_values", "it gave 3 values"),
    ("--dataset", "model_data:lists", "x_train is a list: give numpy arrays or torch tensors"),
    ("--dataset", "model_data:loader_raises", "FileNotFoundError: no data under ''"),
])
def test_a_bad_plugin_is_one_line_naming_what_is_wrong_and_exit_2(tmp_path, capsys, flag, value, needle):
    other = ["--dataset", "model_data:blobs"] if flag == "--model" else ["--model", "model_data:plain"]
    code = main(["chaos", "--preset", "tiny", flag, value, *other, "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"twophase: error: {flag[2:]}=") and needle in err, err
    assert not (tmp_path / "c").exists()  # refused before anything was made


@pytest.mark.parametrize(("factory", "given"), [
    ("plain", {}), ("with_width", {"width": 0.5}), ("with_options", {"width": 0.5, "dropout": 0.25}),
])
def test_width_and_dropout_are_passed_only_to_a_factory_that_takes_them(factory, given):
    from model_data import CALLED

    from twophase_core.science.models import build_model

    CALLED.clear()
    train = conf.replace(_tiny("chaos").train, model=f"model_data:{factory}", width=0.5, dropout=0.25)
    build_model(train, (2, 5), 3)
    assert CALLED == [{"in_shape": (2, 5), "classes": 3, **given}]


def test_data_comes_as_the_loader_gives_it_numpy_or_tensors():
    from model_data import blobs

    from twophase_core.science.data import get_dataset

    xtr, ytr, xte, yte = blobs("")
    for loader in ("blobs", "blobs_as_tensors"):
        ds = get_dataset(conf.replace(_tiny("chaos").train, dataset=f"model_data:{loader}"))
        assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
        assert np.array_equal(ds.x_train.numpy(), xtr) and np.array_equal(ds.y_test.numpy(), yte)
        assert ds.num_classes == 3 and ds.input_shape == (2, 5)
    assert conf.iterations_per_epoch(_tiny("chaos").train) == 96 // 32


def test_builtin_keys_hold_no_plugin_and_a_plugins_hold_its_code():
    cfg = preset("tiny", "chaos")
    assert conf.plugin_identity(cfg.train) == {}
    assert conf.config_hash(cfg) == conf.digest({"schema": conf.SCHEMA, "kind": "chaos", "config": conf.to_dict(cfg)})
    own = _tiny("chaos")
    ident = conf.plugin_identity(own.train)
    import hashlib

    import model_data

    source = Path(model_data.__file__).read_bytes()
    expected = hashlib.sha256(b"model_data\0" + str(len(source)).encode() + b"\0" + source).hexdigest()[:20]
    assert ident == {"model": {"target": "model_data:with_width", "source": expected},
                     "dataset": {"target": "model_data:blobs", "source": expected, "root": ""}}


def _module(folder: Path, body: str, version: str | None = None) -> None:
    head = f"__twophase_version__ = {version!r}\n" if version else ""
    (folder / "edited_net.py").write_text(head + "from torch import nn\n\n\ndef net(in_shape, classes):\n"
                                          f"    return nn.Sequential(nn.Flatten(), {body})\n")


def _keys(folder: Path) -> tuple[str, str]:
    sys.modules.pop("edited_net", None)
    importlib.invalidate_caches()
    cfg = conf.replace(_tiny("chaos"), model="edited_net:net")
    conf.validate(cfg)
    return conf.config_hash(cfg), cfg.train.trajectory_key()


@pytest.mark.slow
def test_editing_the_models_code_gives_new_keys_and_a_declared_version_holds_them(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # edits within a second must not meet a stale .pyc
    _module(tmp_path, "nn.Linear(10, 3)")
    before = _keys(tmp_path)
    store = Store(tmp_path / "cache")
    first = run_experiment(conf.replace(_tiny("linear"), model="edited_net:net"), store)
    _module(tmp_path, "nn.Linear(10, 3, bias=False)")
    after = _keys(tmp_path)
    assert before[0] != after[0] and before[1] != after[1]  # the result and the base run's checkpoints alike
    second = run_experiment(conf.replace(_tiny("linear"), model="edited_net:net"), store)
    assert second.hash != first.hash  # computed anew, never served from the old code's key
    assert not np.array_equal(first.arrays["acc"], second.arrays["acc"])  # by the edited code
    assert load_result(store, "linear", first.hash) is not None  # the old code's result stays under its own key
    _module(tmp_path, "nn.Linear(10, 3)", version="2")
    declared = _keys(tmp_path)
    _module(tmp_path, "nn.Linear(10, 3,)", version="2")
    assert _keys(tmp_path) == declared  # the version is the plugin's word
    _module(tmp_path, "nn.Linear(10, 3)", version="3")
    assert _keys(tmp_path) != declared


@pytest.mark.slow
def test_chaos_on_an_own_model_and_dataset_by_import_path_from_the_cli_control_is_exactly_zero(tmp_path):
    r = _cli("chaos", "--preset", "tiny", "--model", MODEL, "--dataset", DATA, "--eps", "0", "--quiet", "--json",
             str(tmp_path / "c.json"), cache=tmp_path / "cache")
    assert r.returncode == 0, r.stderr
    out = json.loads((tmp_path / "c.json").read_text())
    assert out["config"]["train"]["model"] == MODEL and out["config"]["train"]["dataset"] == DATA
    for m in ("C", "B", "D"):
        assert all(v == 0.0 for row in out[m] for v in row if v is not None), m
    cfg = conf.replace(preset("tiny", "chaos"), model=MODEL, dataset=DATA, eps=0.0)
    assert out["hash"] == conf.config_hash(cfg)  # this process digests the same files to the same key
    assert 0.8 < out["acc_base"][-1] <= 1.0  # the spirals are learnt: the data reached the model as given


def _kernel(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    """The full eNTK (N O x N O, sample-major) from one autograd gradient per sample and logit."""
    params = [p for p in model.parameters() if p.requires_grad]
    model.eval()
    rows = []
    for k in range(len(x)):
        out = model(x[k:k + 1])[0]
        for o in range(len(out)):
            g = torch.autograd.grad(out[o], params, retain_graph=True)
            rows.append(torch.cat([t.flatten() for t in g]).double())
    j = torch.stack(rows)
    return (j @ j.T).numpy()


@pytest.mark.slow
def test_the_cone_on_an_own_model_equals_kernels_from_plain_autograd(tmp_path):
    from twophase_core.science.data import stratified_subset
    from twophase_core.science.train import Training

    cfg = conf.replace(preset("tiny", "cone"), model=MODEL, dataset=DATA)
    result = run_experiment(cfg, Store(tmp_path / "cache"))
    training = Training(cfg.train, Store(tmp_path / "cache"))
    x = training.ds.x_train[stratified_subset(training.ds.y_train, cfg.n_samples, cfg.subset_seed)]
    ks = [_kernel(training.base().model(t), x) for t in sorted(cfg.checkpoints)]
    flat = [k.ravel() for k in ks]
    s = np.array([[1 - a @ b / np.sqrt((a @ a) * (b @ b)) for b in flat] for a in flat])
    np.testing.assert_allclose(result.arrays["S"], s, atol=1e-5)
    assert s[0, -1] > 1e-3  # the kernel moved: the comparison is not between zeros


@pytest.mark.slow
def test_a_sweep_over_an_own_model_by_registered_name_matches_this_processs_keys(tmp_path):
    r = _cli("sweep", "chaos", "--preset", "tiny", "--model", "tanh_mlp", "--dataset", "spirals", "--vary",
             "lr=0.05,0.1", "--replicates", "1", "--quiet", "--json", str(tmp_path / "s.json"), cache=tmp_path / "c")
    assert r.returncode == 0, r.stderr
    sweep = json.loads((tmp_path / "s.json").read_text())
    assert [g["varied"] for g in sweep["groups"]] == [{"lr": 0.05}, {"lr": 0.1}]
    expected = {conf.config_hash(conf.replace(preset("tiny", "chaos"), model="tanh_mlp", dataset="spirals", lr=lr))
                for lr in (0.05, 0.1)}
    assert {run["hash"] for run in sweep["runs"]} == expected


@pytest.mark.slow
def test_a_job_runs_a_model_from_a_module_in_the_current_folder(tmp_path):
    """`twophase` (the installed script, whose folder, not this one, heads sys.path) finds mine.py here, and so
    does the job's worker process."""
    (tmp_path / "mine.py").write_text((EXAMPLE / "twophase_example_plugin" / "models.py").read_text())
    exe = [str(Path(sys.executable).with_name("twophase"))]
    r = _cli("submit", "linear", "--preset", "tiny", "--model", "mine:tanh_mlp", "--dataset", "spirals", "--wait",
             "--quiet", cache=tmp_path / "c", cwd=tmp_path, exe=exe)
    assert r.returncode == 0, r.stdout + r.stderr
    [rec] = JobManager(Store(tmp_path / "c")).list()
    assert rec.status == "done" and rec.config["train"]["model"] == "mine:tanh_mlp"
    sys.path.insert(0, str(tmp_path))
    try:
        cfg = conf.replace(preset("tiny", "linear"), model="mine:tanh_mlp", dataset="spirals")
        assert rec.id == f"linear-{conf.config_hash(cfg)}"
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("mine", None)


def test_models_and_datasets_list_builtins_and_registered_plugins_with_their_help(capsys):
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[0] == "mlp" and lines[0].split(None, 1)[1].startswith("two hidden ReLU layers")
    [mine] = [ln for ln in lines if ln.startswith("tanh_mlp ")]
    assert "Two tanh hidden layers of 64*width units" in mine and "twophase-example-plugin" in mine
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    assert "spirals" in out and "Three interleaved spiral arms" in out and "MODULE:CALLABLE" in out


def test_the_form_offers_registered_names_and_runs_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TWOPHASE_CACHE_DIR", str(tmp_path / "cache"))
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.switch_page("pages/linear.py").run()
    at.selectbox(key="preset_linear").set_value("tiny").run()
    model, data = at.selectbox(key="linear.tiny.model"), at.selectbox(key="linear.tiny.dataset")
    assert model.options == [*conf.MODELS, "tanh_mlp"] and data.options == [*conf.DATASETS, "spirals"]
    model.set_value("tanh_mlp")
    data.set_value("spirals")
    [run] = [b for b in at.button if b.label == "Run"]
    run.click().run()
    assert not at.exception and not at.error
    jm = JobManager(Store(tmp_path / "cache"))
    [rec] = jm.list()
    assert rec.config["train"]["model"] == "tanh_mlp" and rec.config["train"]["dataset"] == "spirals"
    jm.cancel(rec.id)


def test_the_form_refuses_an_import_path_and_the_app_never_imports_one(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("TWOPHASE_CACHE_DIR", str(cache))
    cfg = conf.replace(preset("tiny", "linear"), model=MODEL, dataset="spirals")
    result = run_experiment(cfg, Store(cache))  # made from a notebook: opened in the app, it shows as it is
    monkeypatch.delitem(sys.modules, "twophase_example_plugin.models")
    plugins.forget()
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params.update({"page": "linear", "run": f"linear-{result.hash}"})
    at.run()
    assert not at.exception and at.selectbox(key="preset_linear").value == "this run"
    assert at.selectbox(key=f"linear.linear-{result.hash}.model").value == MODEL
    [run] = [b for b in at.button if b.label == "Run"]
    run.click().run()
    assert not at.exception
    [error] = [e.value for e in at.error]
    assert error.startswith(f"model='{MODEL}' is invalid: is an import path, which the app does not run"), error
    assert JobManager(Store(cache)).list() == []
    assert "twophase_example_plugin.models" not in sys.modules  # the app never imported it
    conf.validate(cfg)  # (the refusal is the app's script threads', not this test's)


@pytest.mark.slow
def test_no_page_of_the_app_imports_a_module_a_user_names(tmp_path, monkeypatch):
    """The sweep page's free text reaches the engine, which refuses import paths in the app's script runs."""
    monkeypatch.setenv("TWOPHASE_CACHE_DIR", str(tmp_path / "cache"))
    for module in ("twophase_example_plugin.models", "twophase_example_plugin.data"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    plugins.forget()
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["page"] = "sweeps"
    at.run()
    at.radio(key="sweep_kind").set_value("linear").run()
    at.selectbox(key="sweep_preset").set_value("tiny").run()
    at.text_area(key="sweep_vary_linear_tiny").set_value(f"model=mlp,{MODEL}")
    at.text_area(key="sweep_over_linear_tiny").set_value(f"dataset={DATA}")
    [go] = [b for b in at.button if b.label == "Run sweep"]
    go.click().run()
    assert not at.exception
    [error] = [e.value for e in at.error]
    assert f"dataset='{DATA}' is invalid: is an import path, which the app does not run" in error, error
    assert f"model='{MODEL}' is invalid: is an import path" in error, error
    assert JobManager(Store(tmp_path / "cache")).list() == []
    assert "twophase_example_plugin.models" not in sys.modules and "twophase_example_plugin.data" not in sys.modules


@pytest.mark.slow
def test_the_readmes_own_model_and_data_run_from_the_cli_and_then_from_the_notebook_store(tmp_path):
    """The README's example as written: its mynet.py, its command (the installed script, in that folder), then its
    notebook lines, which find the CLI's result in the store (the same key from another process)."""
    text = (ROOT / "README.md").read_text().split("## Your own model and data", 1)[1].split("\n## ", 1)[0]
    blocks = [b.split("\n", 1) for b in text.split("```")[1::2]]
    assert [lang for lang, _ in blocks] == ["python", "bash", "python"]
    [module, command, notebook] = [body for _, body in blocks]
    (tmp_path / "mynet.py").write_text(module)
    env = {**os.environ, "TWOPHASE_CACHE_DIR": str(tmp_path / "cache")}
    bin_dir = Path(sys.executable).parent
    argv = command.replace("twophase ", f"{bin_dir / 'twophase'} ", 1).split() + ["--json", str(tmp_path / "c.json")]
    r = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    cli = json.loads((tmp_path / "c.json").read_text())
    probe = notebook + "r = run_chaos(replace(preset('tiny', 'chaos'), model='mynet:net', dataset='mynet:data'))\n" \
        "print(r.hash, r.meta['created'], len(r.to_dataframe()))\n"
    n = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert n.returncode == 0, n.stderr
    h, created, rows = n.stdout.split()
    assert (h, created) == (cli["hash"], cli["meta"]["created"])  # the CLI's result, served from the store
    assert int(rows) == len(cli["t0"]) * len(cli["t1"])  # one row per (t0, t1) of the one perturbation seed


def test_a_torchvision_model_by_name_gets_the_classes_and_the_inputs_channels():
    import torchvision

    from twophase_core.science.data import get_dataset
    from twophase_core.science.models import build_model

    cfg = conf.replace(preset("tiny", "chaos"), model="torchvision:resnet18", dataset="digits")
    conf.validate(cfg)
    ds = get_dataset(cfg.train)
    model = build_model(cfg.train, ds.input_shape, ds.num_classes)
    assert type(model) is torchvision.models.ResNet and (model.conv1.in_channels, model.fc.out_features) == (1, 10)
    assert (model.conv1.out_channels, model.conv1.kernel_size, model.conv1.stride) == (64, (7, 7), (2, 2))
    assert model.eval()(ds.x_test[:3]).shape == (3, 10)
    assert conf.plugin_identity(cfg.train) == {"model": {"target": "torchvision:resnet18",
                                                         "version": f"torchvision {torchvision.__version__}"}}


@pytest.mark.parametrize(("model", "dataset", "needle"), [
    ("torchvision:resnet1", "digits", "has no classification model 'resnet1'"),
    ("torchvision:resnet18", "mnist1d", "take 2-D images (C, H, W), not inputs of shape (1, 40)"),
    ("torchvision:vgg11_bn", "digits", "forward on inputs of shape (2, 1, 8, 8) failed: RuntimeError"),
])
def test_a_torchvision_model_that_cannot_work_is_one_line_and_exit_2(capsys, tmp_path, model, dataset, needle):
    code = main(["chaos", "--preset", "tiny", "--model", model, "--dataset", dataset, "--print-config"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith(f"twophase: error: model='{model}'"), err
    assert needle in err, err
