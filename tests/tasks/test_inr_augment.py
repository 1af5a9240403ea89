"""Weight-space augmentations of SIRENs: sign flips keep the function, affine edits move the image."""

from __future__ import annotations

import math

import pytest
import torch

from lopt_graphs.tasks.inr.augment import augment_weights, random_affine, random_signs
from lopt_graphs.tasks.inr.classify import ClassifyConfig
from lopt_graphs.tasks.inr.siren import pixel_grid, siren_forward, siren_init


def _sirens(b: int = 5) -> list[torch.Tensor]:
    return [p.double() for p in siren_init(b, torch.arange(b) + 7)]


def test_sign_flips_change_weights_but_not_the_function():
    params = _sirens()
    flipped = random_signs(params, torch.Generator().manual_seed(0))
    assert not torch.equal(flipped[0], params[0]) and not torch.equal(flipped[2], params[2])
    assert torch.equal(flipped[0].abs(), params[0].abs()) and torch.equal(flipped[5], params[5])
    coords = pixel_grid(12, 12).double()
    torch.testing.assert_close(siren_forward(flipped, coords), siren_forward(params, coords), rtol=0, atol=1e-12)


def test_affine_edit_equals_the_inr_at_transformed_coordinates():
    params = _sirens()
    gen = torch.Generator().manual_seed(1)
    moved = random_affine(params, gen)
    assert torch.equal(moved[2], params[2])  # only the first layer changes
    # recover A and t per INR from the edit: W1' = W1 A, b1' = b1 + W1 t (W1 is [32, 2], full column rank)
    a = torch.linalg.lstsq(params[0], moved[0]).solution
    t = torch.linalg.lstsq(params[0], (moved[1] - params[1]).unsqueeze(-1)).solution.squeeze(-1)
    coords = pixel_grid(9, 9).double()
    transformed = coords @ a.transpose(1, 2) + t.unsqueeze(1)  # [B, P, 2]: A x + t
    torch.testing.assert_close(siren_forward(moved, coords), siren_forward(params, transformed))
    det = torch.linalg.det(a)
    assert ((det > 0.9 ** 2 - 1e-9) & (det < 1.1 ** 2 + 1e-9)).all()  # rotation times scale in [0.9, 1.1]
    assert t.abs().max() <= 0.1 + 1e-9
    angles = torch.atan2(a[:, 1, 0], a[:, 0, 0]).abs()
    assert angles.max() <= math.radians(15) + 1e-9 and angles.max() > 0


def test_augment_weights_is_seeded_and_checks_its_kind():
    params = _sirens()
    a = augment_weights(params, "sign_affine", torch.Generator().manual_seed(2))
    b = augment_weights(params, "sign_affine", torch.Generator().manual_seed(2))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert all(torch.equal(x, y) for x, y in zip(augment_weights(params, "none", torch.Generator()), params))
    with pytest.raises(ValueError, match="Unknown weight augmentation 'flip'"):
        augment_weights(params, "flip", torch.Generator())
    with pytest.raises(ValueError, match="weight_aug"):
        ClassifyConfig(weight_aug="flip")
