"""Train the tiny "scenes-vit" CLIP on synthetic scenes with the contrastive loss only.

The result is a genuine open_clip CLIP (built from tests/fixtures/models/scenes-vit.json) that the
test suite loads through the product's normal "local checkpoint + model config" path, to check
that GEM localizes named objects. No pixel supervision: images and captions only.

    .venv/bin/python scripts/train_tiny_clip.py --threads 2   # 1500 steps, about 34 minutes on 2 idle cores

Weights are written as fp16 safetensors every --save-every steps and at the end, so an interrupted
run still leaves a usable file; --resume continues from the full-precision state kept beside it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch.utils.data import DataLoader, IterableDataset

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the scenes generator lives in the test tree, not in the installed engine
    sys.path.insert(0, str(ROOT))

from tests import scenes  # noqa: E402

CONFIG = ROOT / "tests" / "fixtures" / "models" / "scenes-vit.json"
TRAIN_SEED = 1  # scene stream used for training; tests and benches use other seeds


class SceneBatches(IterableDataset):
    """Batches of (normalized pixels, captions, hard negatives), deterministic per batch index."""

    def __init__(self, seed: int, batch_size: int, size: int, mean, std, start: int, stop: int):
        self.seed, self.batch_size, self.size, self.start, self.stop = seed, batch_size, size, start, stop
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __iter__(self):
        for step in range(self.start, self.stop):
            pixels, texts, negatives = [], [], []
            for k in range(self.batch_size):
                index = step * self.batch_size + k
                scene = scenes.make_scene(scenes.scene_rng(self.seed, index), size=self.size)
                text, negative = scenes.training_pair(scene, scenes.scene_rng(self.seed + 1_000_003, index))
                array = torch.from_numpy(np.asarray(scene.image, dtype=np.float32) / 255.0).permute(2, 0, 1)
                pixels.append((array - self.mean) / self.std)
                texts.append(text)
                negatives.append(negative)
            yield torch.stack(pixels), texts, negatives


def contrastive_loss(model, pixels, tokens, texts: list[str], negatives: list[str]) -> tuple[torch.Tensor, float]:
    """Return the symmetric CLIP loss with hard-negative captions as extra texts, and image->text accuracy."""
    batch = pixels.shape[0]
    image = model.encode_image(pixels, normalize=True)
    text = model.encode_text(tokens, normalize=True)
    scale = model.logit_scale.exp()
    logits = scale * image @ text.T  # [B, 2B]: captions then hard negatives
    # A caption string that also belongs to another image is not a negative for it.
    all_texts = texts + negatives
    same = torch.tensor([[all_texts[j] == texts[i] and j != i for j in range(2 * batch)] for i in range(batch)])
    logits = logits.masked_fill(same, float("-inf"))
    target = torch.arange(batch)
    loss_i = F.cross_entropy(logits, target)
    loss_t = F.cross_entropy(logits[:, :batch].T, target)
    accuracy = (logits.argmax(dim=1) == target).float().mean().item()
    return (loss_i + loss_t) / 2, accuracy


def save_weights(model: torch.nn.Module, path: Path, config_name: str) -> None:
    """Write the model's state dict as fp16 safetensors, atomically."""
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    partial = path.with_suffix(".partial")
    save_file(state, str(partial), metadata={"format": "pt", "config": config_name})
    partial.replace(path)


def learning_rate(step: int, steps: int, peak: float, warmup: int) -> float:
    """Return the linear-warmup, cosine-decay learning rate of ``step``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--warmup", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0, help="torch seed for the initial weights")
    # Intra-op threads. On a CPU shared with other jobs, 1 was 4x faster per step than 2 (threads
    # wait on each other when one is descheduled); on an idle machine, use the core count.
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--save-every", type=int, default=50)
    parser.add_argument("--config", type=Path, default=CONFIG, help="open_clip model config (JSON)")
    parser.add_argument("--out", type=Path, default=None, help="weights file (default: beside the config)")
    parser.add_argument("--resume", action="store_true", help="continue from <out>.state.pt")
    args = parser.parse_args()

    args.out = args.out or args.config.with_suffix(".safetensors")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    open_clip.add_model_config(args.config)
    model = open_clip.create_model(args.config.stem, pretrained=None)
    tokenizer = open_clip.get_tokenizer(args.config.stem)
    size = model.visual.image_size[0] if isinstance(model.visual.image_size, tuple) else model.visual.image_size
    mean, std = model.visual.preprocess_cfg["mean"], model.visual.preprocess_cfg["std"]

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.98), eps=1e-6,
    )
    state_path = args.out.with_suffix(".state.pt")
    start = 0
    if args.resume and state_path.exists():
        state = torch.load(state_path, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = state["step"]
    params = sum(p.numel() for p in model.parameters())
    print(json.dumps({"params": params, "start": start, **{k: str(v) for k, v in vars(args).items()}}), flush=True)

    loader = DataLoader(
        SceneBatches(TRAIN_SEED, args.batch_size, size, mean, std, start, args.steps),
        batch_size=None, num_workers=1, prefetch_factor=2,
    )
    model.train()
    began = time.monotonic()
    for step, (pixels, texts, negatives) in enumerate(loader, start=start):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr, args.warmup)
        tokens = tokenizer(texts + negatives)
        loss, accuracy = contrastive_loss(model, pixels, tokens, texts, negatives)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        done = step + 1
        print(
            f"step {done}/{args.steps} loss {loss.item():.4f} acc {accuracy:.3f} "
            f"lr {optimizer.param_groups[0]['lr']:.2e} scale {model.logit_scale.exp().item():.1f} "
            f"elapsed {time.monotonic() - began:.0f}s",
            flush=True,
        )
        if done % args.save_every == 0 or done == args.steps:
            save_weights(model, args.out, args.config.stem)
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": done}, state_path)
    print(f"saved {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)", flush=True)


if __name__ == "__main__":
    main()
