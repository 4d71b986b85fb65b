"""The science and the integrity check, without any workflow engine."""
import math

import numpy as np
import pytest
import torch

import common


def test_simulation_matches_the_wave_formula_at_sample_points():
    n, period = 33, 50.0
    sim = common.simulate(index=7, period=period, grid_size=n, compute_time=0)
    axis = np.linspace(0, 1, n) * 4 * math.pi - 2 * math.pi
    omega = 2 * math.pi / period
    for step, (row, col) in [(0, (0, 0)), (3, (5, 17)), (9, (32, 11)), (6, (16, 16))]:
        r = math.hypot(axis[col], axis[row])
        assert sim.pairs[step, 0, row, col] == pytest.approx(math.sin(2 * r - omega * step) / (r + 1))
        assert sim.pairs[step, 1, row, col] == pytest.approx(
            math.sin(2 * r - omega * (step + 1)) / (r + 1))
    assert sim.index == 7 and sim.pairs.shape == (10, 2, n, n)
    assert sim.pairs.dtype == np.float64 and sim.pairs.flags.c_contiguous


def test_pairs_are_consecutive_steps():
    sim = common.simulate(0, 45.0, 16, compute_time=0)
    np.testing.assert_array_equal(sim.pairs[1:, 0], sim.pairs[:-1, 1])
    assert not np.array_equal(sim.pairs[0, 0], sim.pairs[0, 1])


def test_periods_are_distinct_and_files_named_by_index():
    periods = common.wave_periods(128)
    assert len(set(periods)) == 128 and periods[0] == 40 and periods[-1] == 80


@pytest.mark.parametrize("kernel_size", [3, 5, 7, 9])
def test_simple_cnn_keeps_the_grid_shape(kernel_size):
    model = common.SimpleCNN(kernel_size)
    convs = [model.conv1, model.conv2, model.conv3, model.conv4]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(1, 8), (8, 16), (16, 8), (8, 1)]
    assert all(c.kernel_size == (kernel_size, kernel_size) for c in convs)
    assert model(torch.zeros(2, 1, 20, 20)).shape == (2, 1, 20, 20)


def _data(num_sims=3, n=16):
    sims = [common.simulate(i, p, n, 0) for i, p in enumerate(common.wave_periods(num_sims))]
    return sims, common.TrainingData([s.report(io_s=0) for s in sims], n)


def test_trainer_runs_one_epoch_with_a_finite_loss():
    sims, data = _data()
    for sim in sims:
        data.add(sim.index, sim.pairs)
    report = common.train(data, rank=0, kernel_size=3, io_s=0.0, cpu_threads=1)
    assert report.samples == 30 and len(report.losses) == 1 and math.isfinite(report.losses[0])
    assert report.device == str(common.pick_device())
    assert report.train_s > 0 and report.warmup_s > 0
    assert report.bytes_read == sum(s.pairs.nbytes for s in sims)
    inputs, outputs = data.tensors()
    assert inputs.shape == outputs.shape == (30, 1, 16, 16) and inputs.dtype == torch.float32
    # the float32 copy holds the producer's values, each input paired with its own output
    np.testing.assert_allclose(outputs[10:20, 0].numpy(), sims[1].pairs[:, 1], rtol=1e-6, atol=1e-7)


@pytest.fixture(scope="module")
def filled():
    sims, data = _data(num_sims=4, n=16)
    for sim in sims:
        data.add(sim.index, sim.pairs)
    return data


@pytest.mark.parametrize("kernel_size", [3, 5, 7, 9])
def test_epochs_continue_training_one_model(filled, kernel_size):
    """Each epoch continues from the last: the loss after 3 epochs is below the loss after 1
    (a fresh model per epoch would start again from the first epoch's loss)."""
    report = common.train(filled, rank=1, kernel_size=kernel_size, io_s=0.0, cpu_threads=1,
                          epochs=3)
    assert len(report.losses) == 3
    assert report.losses[2] < report.losses[0], report.losses
    assert report.train_s > 0          # the mean of the epochs


def test_the_warm_up_leaves_the_model_as_it_was(filled):
    inputs, outputs = filled.tensors()
    trainer = common.Trainer(inputs, outputs, kernel_size=3, device=torch.device("cpu"), seed=7)
    before = {name: value.clone() for name, value in trainer.model.state_dict().items()}
    assert trainer.warm_up() > 0
    after = trainer.model.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)


@pytest.mark.parametrize("device, pinned", [("cpu", False), ("cuda", True)])
def test_batches_for_a_gpu_are_pinned(filled, device, pinned):
    """non_blocking copies to a GPU overlap with the work only from pinned memory. Building
    the trainer needs no GPU: the model moves to the device, the loader only says it pins."""
    inputs, outputs = filled.tensors()
    if device == "cuda" and not torch.cuda.is_available():
        loader = common.Trainer.make_loader(inputs, outputs, torch.device(device), seed=0)
    else:
        loader = common.Trainer(inputs, outputs, 3, torch.device(device)).loader
    assert loader.pin_memory is pinned and loader.batch_size == common.BATCH_SIZE


def test_no_epochs_means_no_training(filled):
    report = common.train(filled, rank=0, kernel_size=3, io_s=0.0, epochs=0)
    assert report.losses == [] and report.train_s == 0


def test_integrity_check_accepts_everything_once():
    sims, data = _data()
    for sim in reversed(sims):
        data.add(sim.index, sim.pairs)
    assert len(data.tensors()[0]) == 30


def test_integrity_check_rejects_a_missing_simulation():
    sims, data = _data()
    for sim in sims[:-1]:
        data.add(sim.index, sim.pairs)
    with pytest.raises(common.IntegrityError, match="never arrived"):
        data.tensors()


def test_integrity_check_rejects_a_duplicate():
    sims, data = _data()
    data.add(sims[0].index, sims[0].pairs)
    with pytest.raises(common.IntegrityError, match="twice"):
        data.add(sims[0].index, sims[0].pairs)


@pytest.mark.parametrize("step", [0, 4, 9])
def test_integrity_check_rejects_a_mismatched_pair(step):
    sims, data = _data()
    bad = sims[1].pairs.copy()
    bad[step, 1] = sims[2].pairs[step, 1]          # an output from another simulation
    with pytest.raises(common.IntegrityError, match="simulation 1"):
        data.add(1, bad)


def test_integrity_check_rejects_data_under_another_index():
    sims, data = _data()
    with pytest.raises(common.IntegrityError, match="checksum"):
        data.add(0, sims[1].pairs)


def test_reading_order_covers_everything_once_from_different_starts():
    sims, _ = _data(num_sims=8)
    manifest = [s.report(io_s=0) for s in sims]
    orders = [[s.index for s in common.reading_order(manifest, r, 4)] for r in range(4)]
    assert all(sorted(order) == list(range(8)) for order in orders)
    assert len({order[0] for order in orders}) == 4
