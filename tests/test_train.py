"""The branching trainer: resumption, same SGD noise, eps = 0 exactness, divergence, corruption."""

import dataclasses
import pickle

import numpy as np
import pytest
import torch

from twophase_core.science.data import BatchSchedule, crop_flip, get_dataset
from twophase_core.science.train import Training, TrainingDiverged, sgd_update, train_mode
from twophase_core.settings import config as conf
from twophase_core.storage.store import Store

T = conf.TrainConfig(dataset="synthetic", model="cnn", width=0.25, lr=0.05, batch_size=32, iterations=40,
                  augment=True)


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


def test_resume_equals_continuous(tmp_path):
    one = Training(T, Store(tmp_path / "a"))
    one.base().ensure([40])
    two = Training(T, Store(tmp_path / "b"))
    two.base().ensure([15])
    two.base().ensure([40])  # resumes from 15: trains only 25 more steps
    assert one.steps_done == 40 and two.steps_done == 40
    assert _same(one.base().model(40), two.base().model(40))
    s1, s2 = one.base().state(40), two.base().state(40)
    m1 = s1.opt.state_dict()["state"][0]["momentum_buffer"]
    assert torch.equal(m1, s2.opt.state_dict()["state"][0]["momentum_buffer"])


def test_extending_trains_only_the_new_part(store):
    run = Training(T, store)
    run.base().ensure([10, 20])
    assert run.steps_done == 20
    run.base().ensure([10, 20, 30])
    assert run.steps_done == 30


def test_zero_eps_branch_reproduces_the_base_run_bitwise(store):
    run = Training(T, store)
    br = run.branch(10, 0.0, "per-coordinate", 0)
    br.ensure([25, 40])
    for t1 in (25, 40):
        assert _same(br.model(t1), run.base().model(t1))
    assert run.perturbation_norms(10, 0.0, "per-coordinate", 0)["realized"] == 0.0


def _flat(model: torch.nn.Module) -> np.ndarray:
    return np.concatenate([p.detach().double().numpy().ravel() for p in model.parameters() if p.requires_grad])


@pytest.mark.parametrize("mode, eps", [("per-coordinate", 1e-3), ("total-l2", 1e-2), ("relative", 1e-3)])
def test_perturbation_modes_realize_their_norm(store, mode, eps):
    """The branch's start minus the base checkpoint, measured here: the size each mode promises, and the
    size `perturbation_norms` records."""
    run = Training(T, store)
    theta = _flat(run.base().model(5))
    br = run.branch(5, eps, mode, 1)
    realized = float(np.linalg.norm(_flat(br.start_state().model) - theta))
    expected = {"per-coordinate": eps * np.sqrt(theta.size), "total-l2": eps,
                "relative": eps * float(np.linalg.norm(theta))}[mode]
    assert realized == pytest.approx(expected, rel=0.15 if mode == "per-coordinate" else 1e-4)
    assert run.perturbation_norms(5, eps, mode, 1)["realized"] == pytest.approx(realized, rel=1e-9)
    assert not _same(br.model(20), run.base().model(20))


def test_tiny_total_norm_is_recorded_as_realized_after_the_cast(store):
    run = Training(T, store)
    n = run.perturbation_norms(0, 1e-12, "total-l2", 0)
    assert n["realized"] < 1e-12 * 0.5  # below half an ulp of most weights: mostly rounded away


def test_divergence_names_the_iteration_and_keeps_checkpoints(store):
    cfg = dataclasses.replace(T, model="mlp", lr=100.0, checkpoint_every=1, augment=False)
    run = Training(cfg, store)
    with pytest.raises(TrainingDiverged, match=r"iteration \d+ \(lr=100\).*lower lr") as e:
        run.base().ensure([40])
    assert e.value.iteration >= 1
    kept = store.checkpoints(cfg.trajectory_key())
    assert kept and max(kept) <= e.value.iteration


def test_corrupt_checkpoint_is_recomputed_not_used(store):
    run = Training(T, store)
    good = run.base().model(20)
    path = store.checkpoint_path(run.key, 20)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert store.load_checkpoint(run.key, 20) is None  # checksum catches it; file dropped
    again = run.base().model(20)
    assert _same(good, again)


def test_batch_schedule_is_a_pure_function_of_seed_and_iteration():
    a = BatchSchedule(256, 32, 7, True)
    b = BatchSchedule(256, 32, 7, True)
    for t in (0, 9, 123):
        pa, pb = a.plan(t), b.plan(t)
        assert np.array_equal(pa.indices, pb.indices) and np.array_equal(pa.shifts, pb.shifts)
        assert pa.dropout_seed == pb.dropout_seed
    # one epoch visits every point once
    seen = np.concatenate([a.plan(t).indices for t in range(8)])
    assert sorted(seen.tolist()) == list(range(256))
    assert not np.array_equal(a.plan(0).indices, BatchSchedule(256, 32, 8, True).plan(0).indices)


def test_the_dropout_seed_kept_per_iteration_is_the_draw_of_its_own_seed_sequence():
    for augment in (False, True):
        s = BatchSchedule(256, 32, 7, augment)
        for t in (0, 9, 123, 9):  # 9 again: kept
            rng = np.random.default_rng([7, t, 1])
            if augment:
                rng.integers(0, 9, size=(32, 2)), rng.random(32)
            assert s.plan(t).dropout_seed == int(rng.integers(0, 2**62))


def test_a_batch_holds_the_planned_rows():
    ds = get_dataset(dataclasses.replace(T, augment=False))
    s = BatchSchedule(len(ds.x_train), 32, 3, False)
    x, y, _ = s.batch(ds, 11)
    idx = torch.from_numpy(s.plan(11).indices)
    assert torch.equal(x, ds.x_train[idx]) and torch.equal(y, ds.y_train[idx])


@pytest.mark.parametrize("momentum,weight_decay,dampening", [(0.9, 1e-4, 0.0), (0.0, 0.0, 0.0), (0.9, 0.0, 0.3),
                                                             (0.0, 1e-3, 0.0)])
def test_sgd_update_is_torch_sgd_bit_for_bit(momentum, weight_decay, dampening):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
    nets = [pickle.loads(pickle.dumps(net)) for _ in range(2)]
    opts = [torch.optim.SGD(n.parameters(), lr=0.1, momentum=momentum, weight_decay=weight_decay,
                            dampening=dampening) for n in nets]
    for t in range(6):
        for n, opt, update in zip(nets, opts, (lambda o: o.step(), sgd_update), strict=True):
            torch.manual_seed(t)
            for i, p in enumerate(n.parameters()):
                # the last layer's bias has no gradient at first, then joins: a buffer starts late
                p.grad = None if (i == 3 and t < 2) else torch.randn_like(p)
            opt.param_groups[0]["lr"] = 0.1 / (t + 1)
            update(opt)
    assert _same(*nets)
    a, b = (o.state_dict() for o in opts)
    assert a["param_groups"] == b["param_groups"] and a["state"].keys() == b["state"].keys()
    assert all(torch.equal(a["state"][i]["momentum_buffer"], b["state"][i]["momentum_buffer"]) for i in a["state"])


def test_sgd_update_leaves_what_it_does_not_reproduce_to_the_optimizer_s_own_step():
    torch.manual_seed(0)
    nets = [torch.nn.Linear(3, 2) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    nesterov = [torch.optim.SGD(n.parameters(), lr=0.1, momentum=0.9, nesterov=True) for n in nets]
    for t in range(3):
        for n, opt, update in zip(nets, nesterov, (lambda o: o.step(), sgd_update), strict=True):
            n.weight.grad, n.bias.grad = torch.full((2, 3), 0.3 + t), torch.full((2,), 0.7 - t)
            update(opt)
    assert _same(*nets)
    called: list[int] = []
    for opt in (torch.optim.SGD(nets[0].parameters(), lr=0.1), torch.optim.Adam(nets[0].parameters())):
        opt.register_step_post_hook(lambda *_: called.append(1))
        sgd_update(opt)
    assert called == [1, 1]


def test_train_mode_switches_a_module_left_in_eval_mode(store):
    run = Training(dataclasses.replace(T, iterations=3), store)
    s = run.initial()
    run.step(s.model, s.opt, 0)
    inner = list(s.model.modules())[-1]
    inner.eval()
    train_mode(s.model)
    assert all(m.training for m in s.model.modules())


def test_crop_flip_matches_a_per_image_loop():
    x = torch.randn(5, 3, 6, 6)
    rng = np.random.default_rng(0)
    shifts, flips = rng.integers(0, 9, size=(5, 2)), rng.random(5) < 0.5
    out = crop_flip(x, shifts, flips, 4)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(5):
        ref = padded[i, :, shifts[i, 0]:shifts[i, 0] + 6, shifts[i, 1]:shifts[i, 1] + 6]
        if flips[i]:
            ref = ref.flip(-1)
        assert torch.equal(out[i], ref)


def test_dropout_masks_are_shared_between_copies(store):
    cfg = conf.TrainConfig(dataset="synthetic", model="vgg16_bn_fc", width=0.0625, batch_size=16, iterations=3)
    run = Training(cfg, store)
    a, b = run.initial(), run.initial()
    la = [float(run.step(a.model, a.opt, t)) for t in range(3)]
    lb = [float(run.step(b.model, b.opt, t)) for t in range(3)]
    assert la == lb and _same(a.model, b.model)


def test_cifar10_loader_reads_a_local_folder(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)

    def batch(n):
        return {"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8), "labels": list(rng.integers(0, 10, n)),
                "batch_label": "x", "filenames": ["f"] * n}

    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump(batch(4), f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(batch(6), f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [b"c"] * 10, b"num_cases_per_batch": 4, b"num_vis": 3072}, f)
    from twophase_core.science.data import load_cifar10_data

    ds = load_cifar10_data(str(tmp_path), download=False)
    assert ds.x_train.shape == (20, 3, 32, 32) and ds.x_test.shape == (6, 3, 32, 32)
    assert ds.y_train.dtype == torch.long and ds.num_classes == 10
    # pixel (0, 0, 0) of the first training image, normalised by hand
    with open(folder / "data_batch_1", "rb") as f:
        raw = pickle.load(f)["data"][0, 0]
    assert float(ds.x_train[0, 0, 0, 0]) == pytest.approx((raw / 255 - 0.4914) / 0.2470, rel=1e-5)


def test_cifar10_missing_folder_says_what_to_do(tmp_path):
    cfg = conf.TrainConfig(dataset="cifar10", model="resnet20", data_root=str(tmp_path / "nowhere"))
    with pytest.raises(conf.ConfigError, match="cifar-10-batches-py"):
        get_dataset(cfg)


def test_training_waits_for_the_process_holding_the_trajectory_and_a_cancel_ends_the_wait(store, lock_holder):
    from twophase_core.science.train import Cancelled, CancelToken

    run = Training(T, store)
    holder = lock_holder(store.root / "runs" / run.key / ".lock")
    try:
        token, told = CancelToken(), []

        def on_wait() -> None:
            told.append(True)
            token.set()  # the user gives up waiting

        with pytest.raises(Cancelled):
            run.base().ensure([10], cancel=token, on_wait=on_wait)
        assert told == [True] and run.steps_done == 0 and store.checkpoints(run.key) == []
    finally:
        holder.kill()  # its lock dies with it
        holder.wait()
    run.base().ensure([10])
    assert run.steps_done == 10 and store.checkpoints(run.key) == [10]


def test_the_shipped_mnist1d_is_what_the_mnist1d_package_generates_and_a_damaged_copy_is_not_used(tmp_path,
                                                                                                  monkeypatch):
    from mnist1d.data import get_dataset_args, make_dataset

    from twophase_core.science import data

    want = make_dataset(get_dataset_args())  # the oracle: a fresh generation by the package itself
    data.clear_cache()
    ds = data.load_mnist1d_data()
    want_x, want_xt = data._standardise(want["x"][:, None].astype(np.float64),
                                        want["x_test"][:, None].astype(np.float64))
    assert torch.equal(ds.x_train, want_x) and torch.equal(ds.x_test, want_xt)
    assert ds.y_train.tolist() == list(want["y"]) and ds.y_test.tolist() == list(want["y_test"])
    damaged = tmp_path / "mnist1d-default.npz"
    raw = bytearray(data.MNIST1D_SHIPPED.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    damaged.write_bytes(bytes(raw))
    monkeypatch.setattr(data, "MNIST1D_SHIPPED", damaged)
    again = data.load_mnist1d_data(cache_dir=tmp_path / "store-data")  # generated again, and kept there
    assert torch.equal(again.x_train, want_x) and (tmp_path / "store-data" / "mnist1d-default.npz").exists()


def _momenta(s) -> list[torch.Tensor]:
    return [v["momentum_buffer"] for _, v in sorted(s.opt.state_dict()["state"].items())]


def test_a_checkpoint_this_process_read_is_not_read_again_and_is_its_files_state(tmp_path, monkeypatch):
    """A state read once comes from memory after that, not from its file again: the same values, and tensors of
    its own, so one handed out and trained on in place changes nothing kept. A state only written is read from
    its file the first time (a store that does not keep what it is given must say so)."""
    cfg = dataclasses.replace(T, momentum=0.9)
    run = Training(cfg, Store(tmp_path / "a"))
    loads: list[tuple[str, int]] = []
    load = Store.load_checkpoint
    monkeypatch.setattr(Store, "load_checkpoint", lambda self, key, t, **kw: (loads.append((key, t)),
                                                                               load(self, key, t, **kw))[1])
    br = run.branch(10, 1e-3, "per-coordinate", 0)
    br.ensure([25])  # the base run to 10 (written, then read once as the branch's start), the branch from it
    s = br.state(25)  # read once
    for t in range(25, 30):  # trained on in place: what is kept must not move with it
        run.step(s.model, s.opt, t)
    again = br.state(25)
    br.ensure([40])  # resumes the branch at 25 from memory
    run.base().state(10)
    assert loads == [(run.key, 10), (br.key, 25)]
    monkeypatch.undo()
    for key, t in ((br.key, 25), (run.key, 10)):
        disk = run.unpack(run.store.load_checkpoint(key, t))
        held = again if key == br.key else run.base().state(10)
        assert _same(held.model, disk.model) and all(map(torch.equal, _momenta(held), _momenta(disk)))
    fresh = Training(cfg, Store(tmp_path / "b"))  # all from files: a process that holds nothing
    fresh.branch(10, 1e-3, "per-coordinate", 0).ensure([25])
    other = Training(cfg, fresh.store)
    other.branch(10, 1e-3, "per-coordinate", 0).ensure([40])
    assert other.steps_done == 15
    a, b = br.state(40), other.branch(10, 1e-3, "per-coordinate", 0).state(40)
    assert _same(a.model, b.model) and all(map(torch.equal, _momenta(a), _momenta(b)))
