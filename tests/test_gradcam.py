"""Grad-CAM on CLIP: theory (Grad-CAM = CAM on a GAP+linear CNN), behaviour, and the model left untouched."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from gem_engine.gradcam import cam_from_scores, default_layer, gradcam_maps


def _pixels(batch: int, size: int = 96, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _texts(labels: int, dim: int = 32, seed: int = 1) -> torch.Tensor:
    return F.normalize(torch.randn(labels, dim, generator=torch.Generator().manual_seed(seed)), dim=-1)


class GapLinearCNN(torch.nn.Module):
    """Conv features -> global average pooling -> one linear layer: the architecture CAM was defined for."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(8, 16, 3, stride=2, padding=1),
        )
        self.fc = torch.nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        activations = self.features(x)
        return self.fc(activations.mean(dim=(2, 3))), activations


def test_gradcam_equals_cam_up_to_a_positive_constant_on_gap_linear_cnn():
    torch.manual_seed(0)
    net = GapLinearCNN(classes=5).eval()
    scores, activations = net(torch.randn(2, 3, 20, 20))
    maps = cam_from_scores(scores, activations, chunk_size=2)

    cam = torch.einsum("lc,bchw->blhw", net.fc.weight, activations.detach())
    relu_cam = torch.relu(cam)
    assert maps.shape == (2, 5, 10, 10)
    assert (cam < 0).any() and (cam > 0).any(), "the check needs both signs so that the ReLU matters"
    # dScore_c / dA_k(i,j) = w_ck / (h*w): Grad-CAM weights are CAM weights over the grid area.
    torch.testing.assert_close(maps * (10 * 10), relu_cam, rtol=1e-5, atol=1e-6)
    positive = relu_cam > 1e-3
    ratios = maps[positive] / relu_cam[positive]
    assert ratios.min() > 0
    torch.testing.assert_close(ratios, torch.full_like(ratios, ratios.mean().item()), rtol=1e-4, atol=0)


@pytest.mark.parametrize("family", ["vit", "resnet"])
def test_maps_have_grid_shape_and_are_nonnegative_float32(family, tiny_vit, tiny_resnet):
    model = tiny_vit if family == "vit" else tiny_resnet
    maps = gradcam_maps(model, _pixels(2), _texts(4))
    grid = (6, 6) if family == "vit" else (3, 3)
    assert maps.shape == (2, 4, *grid)
    assert maps.dtype == torch.float32
    assert (maps >= 0).all()
    assert maps.amax(dim=(-2, -1)).gt(0).any(), "random tiny models still give some positive evidence"
    # Labels are different targets, so their maps differ.
    assert not torch.allclose(maps[:, 0], maps[:, 1])


@pytest.mark.parametrize("family", ["vit", "resnet"])
def test_batched_images_equal_images_one_at_a_time(family, tiny_vit, tiny_resnet):
    model = tiny_vit if family == "vit" else tiny_resnet
    pixels, texts = _pixels(3), _texts(5)
    together = gradcam_maps(model, pixels, texts)
    for index in range(3):
        alone = gradcam_maps(model, pixels[index : index + 1], texts)
        torch.testing.assert_close(together[index : index + 1], alone, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("target", ["cosine", "softmax"])
def test_vocabulary_longer_than_chunk_equals_one_chunk(target, tiny_vit):
    pixels, texts = _pixels(2), _texts(11)
    whole = gradcam_maps(tiny_vit, pixels, texts, target=target, chunk_size=64)
    chunked = gradcam_maps(tiny_vit, pixels, texts, target=target, chunk_size=3)
    single = gradcam_maps(tiny_vit, pixels, texts, target=target, chunk_size=1)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(single, whole, rtol=1e-5, atol=1e-7)


def test_each_label_equals_its_own_plain_backward(tiny_resnet):
    """The batched backward gives, per label, what a separate backward of that label's score would."""
    pixels, texts = _pixels(1), _texts(3)
    maps = gradcam_maps(tiny_resnet, pixels, texts)
    captured = []
    handle = tiny_resnet.visual.layer4.register_forward_hook(lambda m, a, out: captured.append(out))
    try:
        x = pixels.clone().requires_grad_(True)
        cosine = F.normalize(tiny_resnet.visual(x), dim=-1) @ texts.T
    finally:
        handle.remove()
    for label in range(3):
        (grad,) = torch.autograd.grad(cosine[0, label], captured[0], retain_graph=True)
        expected = torch.relu((grad.mean(dim=(2, 3))[:, :, None, None] * captured[0]).sum(1))
        torch.testing.assert_close(maps[:, label], expected.detach(), rtol=1e-5, atol=1e-7)


def test_softmax_target_differs_from_cosine(tiny_vit):
    pixels, texts = _pixels(1), _texts(4)
    cosine = gradcam_maps(tiny_vit, pixels, texts, target="cosine")
    softmax = gradcam_maps(tiny_vit, pixels, texts, target="softmax")
    assert not torch.allclose(cosine, softmax)


def test_explicit_layers_reproduce_the_vit_default(tiny_vit):
    pixels, texts = _pixels(1), _texts(3)
    default = gradcam_maps(tiny_vit, pixels, texts)
    blocks = tiny_vit.visual.transformer.resblocks
    # The last block's input (its ln_1 input) is the previous block's output: same tensor, same gradients.
    by_output = gradcam_maps(tiny_vit, pixels, texts, layer=blocks[-2])
    by_input = gradcam_maps(tiny_vit, pixels, texts, layer=blocks[-1], capture="input")
    torch.testing.assert_close(by_output, default, rtol=0, atol=0)
    torch.testing.assert_close(by_input, default, rtol=0, atol=0)
    layer, capture = default_layer(tiny_vit)
    assert layer is blocks[-1] and capture == "input"


def test_vit_default_is_the_total_gradient_at_the_ln_1_input(tiny_vit):
    """Independent of hooks and leaves: differentiate the tokens entering the last block's ln_1 directly."""
    pixels, texts = _pixels(1), _texts(3)
    maps = gradcam_maps(tiny_vit, pixels, texts)
    visual = tiny_vit.visual
    tokens = []
    handle = visual.transformer.resblocks[-1].ln_1.register_forward_pre_hook(lambda m, a: tokens.append(a[0]))
    try:
        cosine = F.normalize(visual(pixels.clone().requires_grad_(True)), dim=-1) @ texts.T
    finally:
        handle.remove()
    activations = tokens[0][0, 1:].reshape(6, 6, -1)  # drop CLS, row-major grid
    for label in range(3):
        (grad,) = torch.autograd.grad(cosine[0, label], tokens[0], retain_graph=True)
        weights = grad[0, 1:].mean(dim=0)
        expected = torch.relu(activations @ weights)
        torch.testing.assert_close(maps[0, label], expected.detach(), rtol=1e-5, atol=1e-7)


def test_resnet_default_layer_is_layer4(tiny_resnet):
    layer, capture = default_layer(tiny_resnet)
    assert layer is tiny_resnet.visual.layer4 and capture == "output"


def _hook_counts(model: torch.nn.Module) -> list[tuple[int, int, int]]:
    return [
        (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()
    ]


def test_model_is_left_untouched(tiny_vit):
    # A private copy: the session fixture may carry .grad left by the pytorch-grad-cam oracle.
    model = copy.deepcopy(tiny_vit)
    for param in model.parameters():
        param.grad = None
    before_state = {name: value.clone() for name, value in model.state_dict().items()}
    before_hooks = _hook_counts(model)
    before_flags = [p.requires_grad for p in model.parameters()]
    gradcam_maps(model, _pixels(1), _texts(3), chunk_size=2)
    assert _hook_counts(model) == before_hooks
    assert all(p.grad is None for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()] == before_flags
    assert not model.training
    for name, value in model.state_dict().items():
        assert torch.equal(value, before_state[name]), name


def test_no_hook_is_left_when_the_forward_fails(tiny_vit):
    model = copy.deepcopy(tiny_vit)
    before = _hook_counts(model)

    def explode(module, args, output):
        raise RuntimeError("boom")

    handle = model.visual.ln_post.register_forward_hook(explode)
    with pytest.raises(RuntimeError, match="boom"):
        gradcam_maps(model, _pixels(1), _texts(2))
    handle.remove()
    assert _hook_counts(model) == before


def test_works_inside_inference_mode_and_with_frozen_weights(tiny_vit):
    pixels, texts = _pixels(1), _texts(3)
    expected = gradcam_maps(tiny_vit, pixels, texts)
    with torch.inference_mode():
        inference_pixels, inference_texts = pixels.clone(), texts.clone()
        assert inference_pixels.is_inference()
        inside = gradcam_maps(tiny_vit, inference_pixels, inference_texts)
    with torch.no_grad():
        no_grad = gradcam_maps(tiny_vit, pixels, texts)
    frozen = copy.deepcopy(tiny_vit).requires_grad_(False)
    with torch.inference_mode():
        frozen_maps = gradcam_maps(frozen, pixels, texts)
    for maps in (inside, no_grad, frozen_maps):
        torch.testing.assert_close(maps, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_model_on_cpu_is_computed_in_float32(dtype, tiny_vit):
    low = copy.deepcopy(tiny_vit).to(dtype)
    rounded = copy.deepcopy(low).float()  # the same rounded weights, in float32
    pixels, texts = _pixels(1), _texts(3)
    maps = gradcam_maps(low, pixels.to(dtype), texts.to(dtype))
    expected = gradcam_maps(rounded, pixels.to(dtype).float(), texts.to(dtype).float())
    assert maps.dtype == torch.float32
    torch.testing.assert_close(maps, expected, rtol=1e-5, atol=1e-7)
    assert all(p.dtype == dtype for p in low.parameters()), "the caller's model must stay in its dtype"
    assert all(p.grad is None for p in low.parameters())


def test_large_vocabulary_goes_in_bounded_chunks(tiny_resnet, monkeypatch):
    real_grad = torch.autograd.grad
    seeds_per_backward = []

    def spy(outputs, inputs, grad_outputs=None, **kwargs):
        seeds_per_backward.append(grad_outputs.shape[0])
        return real_grad(outputs, inputs, grad_outputs, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", spy)
    maps = gradcam_maps(tiny_resnet, _pixels(2), _texts(300), chunk_size=64)
    monkeypatch.undo()
    # Gradients held at once are [chunk, *activations]: memory follows the chunk, not the vocabulary.
    assert seeds_per_backward == [64, 64, 64, 64, 44]
    assert maps.shape == (2, 300, 3, 3)
    assert torch.isfinite(maps).all()
    torch.testing.assert_close(
        maps[:, 250:], gradcam_maps(tiny_resnet, _pixels(2), _texts(300)[250:]), rtol=1e-5, atol=1e-7
    )


@pytest.mark.parametrize(
    ("pixels", "texts", "kwargs", "message"),
    [
        (_pixels(1), _texts(0), {}, "at least one label"),
        (_pixels(1)[:, :1], _texts(2), {}, "3 \\(RGB\\) channels, got 1"),
        (
            torch.cat([_pixels(1), torch.ones(1, 1, 96, 96)], dim=1),
            _texts(2),
            {},
            "3 \\(RGB\\) channels, got 4",
        ),
        (_pixels(1)[0], _texts(2), {}, "\\[batch, 3, height, width\\]"),
        (_pixels(1)[:0], _texts(2), {}, "no image"),
        (_pixels(1, size=80), _texts(2), {}, "resize the image"),
        (_pixels(1).to(torch.uint8), _texts(2), {}, "floating-point"),
        (_pixels(1).fill_(float("nan")), _texts(2), {}, "NaN"),
        (_pixels(1), _texts(2, dim=16), {}, "dimension 16"),
        (_pixels(1), _texts(2)[0], {}, "\\[labels, dim\\]"),
        (_pixels(1), _texts(2), {"target": "logits"}, "unknown Grad-CAM target"),
        (_pixels(1), _texts(2), {"chunk_size": 0}, "chunk_size"),
        (_pixels(1), _texts(2), {"capture": "middle"}, "capture"),
        (_pixels(1), _texts(2), {"layer": torch.nn.Identity()}, "not a module of the model"),
    ],
)
def test_bad_input_gets_a_clear_error(pixels, texts, kwargs, message, tiny_vit):
    before = _hook_counts(tiny_vit)
    with pytest.raises(ValueError, match=message):
        gradcam_maps(tiny_vit, pixels, texts, **kwargs)
    assert _hook_counts(tiny_vit) == before


def test_model_in_training_mode_is_refused(tiny_resnet):
    model = copy.deepcopy(tiny_resnet).train()
    running_mean = model.visual.bn1.running_mean.clone()
    with pytest.raises(ValueError, match="training mode"):
        gradcam_maps(model, _pixels(2), _texts(2))
    assert torch.equal(model.visual.bn1.running_mean, running_mean), "batch-norm statistics must not move"


def test_non_clip_model_is_refused():
    with pytest.raises(TypeError, match="visual"):
        gradcam_maps(torch.nn.Linear(3, 3), _pixels(1), _texts(2))


def test_tower_without_default_layer_asks_for_one():
    class Tower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 32, 8, stride=8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x).mean(dim=(2, 3))

    model = torch.nn.Module()
    model.visual = Tower().eval()
    with pytest.raises(ValueError, match="pass layer="):
        gradcam_maps(model, _pixels(1), _texts(2))
    maps = gradcam_maps(model, _pixels(1), _texts(2), layer=model.visual.conv)
    assert maps.shape == (1, 2, 12, 12)


class SideBranchTower(torch.nn.Module):
    """A tower with a module called twice and a branch whose result is thrown away."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 32, 8, stride=8)
        self.shared = torch.nn.Conv2d(32, 32, 1)
        self.unused = torch.nn.Conv2d(32, 32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.conv(x)
        self.unused(features)
        return self.shared(self.shared(features)).mean(dim=(2, 3))


@pytest.mark.parametrize("frozen", [False, True])
@pytest.mark.parametrize(
    ("layer", "message"),
    [("shared", "ran 2 times"), ("unused", "depend on the Grad-CAM layer's activations")],
)
def test_layer_that_runs_twice_or_feeds_nothing_is_refused(layer, message, frozen):
    model = torch.nn.Module()
    model.visual = SideBranchTower().eval().requires_grad_(not frozen)
    with pytest.raises(ValueError, match=message):
        gradcam_maps(model, _pixels(1), _texts(2), layer=getattr(model.visual, layer))
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
