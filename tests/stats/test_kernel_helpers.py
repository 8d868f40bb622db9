"""The two small public kernels of analysis.stats, against numpy."""

from __future__ import annotations

import numpy as np
import torch

from analysis.stats import as_channel_matrix, normalised_moment


def test_as_channel_matrix_puts_each_channel_in_a_row_of_its_positions():
    x = torch.randn(3, 4, 5, 6)
    ref = np.moveaxis(x.numpy(), 1, 0).reshape(4, -1)  # C x (N·H·W), images outermost
    np.testing.assert_array_equal(as_channel_matrix(x).numpy(), ref)
    np.testing.assert_array_equal(as_channel_matrix(x[0]).numpy(), x[0].reshape(4, -1).numpy())  # C×H×W: one image
    np.testing.assert_array_equal(as_channel_matrix(x[:, :, 0, 0]).numpy(), x[:, :, 0, 0].T.numpy())  # N×C


def test_normalised_moment_is_the_correlation_over_valid_live_channels():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(5, 200))
    y[1] = 0.8 * y[0] + 0.2 * y[1]
    y[3] = 0.0  # a dead channel: zero diagonal
    m = torch.from_numpy(y @ y.T)
    valid = torch.tensor([True, True, False, True, True])  # channel 2 excluded by the caller
    got = normalised_moment(m, valid).numpy()
    ok = np.array([True, True, False, False, True])
    d = np.sqrt(np.diag(y @ y.T))
    ref = np.zeros((5, 5))
    sub = np.ix_(ok, ok)
    ref[sub] = (y @ y.T)[sub] / np.outer(d, d)[sub]
    np.fill_diagonal(ref, ok.astype(float))
    np.testing.assert_allclose(got, ref, atol=1e-12)
    assert not np.isnan(got).any() and np.abs(got).max() <= 1.0
