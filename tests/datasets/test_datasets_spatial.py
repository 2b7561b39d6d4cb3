"""The bundled Fiji earthquakes against figures of R's datasets::quakes (summary(quakes) and its first rows)."""

import torch

from bayeskit.datasets import load_fiji_quakes


def test_fiji_quakes_match_r_quakes():
    data = load_fiji_quakes(dtype=torch.float64)
    assert data.x.shape == (1000, 2) and data.y.shape == (1000,) and data.x.dtype == torch.float64
    assert data.feature_names == ("longitude", "latitude")
    # R: head(quakes, 2); quakes[1000, ]
    torch.testing.assert_close(data.x[[0, 1, 999]], torch.tensor([[181.62, -20.42], [181.03, -20.62],
                                                                  [170.56, -21.59]], dtype=torch.float64))
    assert data.y[[0, 1, 999]].tolist() == [562.0, 650.0, 165.0]
    # R: summary(quakes): lat -38.59 .. -10.72, mean -20.64; long 165.67 .. 188.13; depth 40 .. 680, mean 311.4
    assert data.x[:, 1].min() == -38.59 and data.x[:, 1].max() == -10.72
    assert data.x[:, 0].min() == 165.67 and data.x[:, 0].max() == 188.13
    assert data.y.min() == 40 and data.y.max() == 680
    assert abs(float(data.y.mean()) - 311.4) < 0.05 and abs(float(data.x[:, 1].mean()) + 20.64) < 0.005
    assert load_fiji_quakes().x.dtype == torch.get_default_dtype()
