"""What ``seedfast demo`` trains and how: sizes, steps, learning rates, decoding (full and quick).

The full demo is sized to finish in at most 15 minutes on a 2-core CPU with no GPU; the quick
one runs the same path with few steps (CI smoke, under 3 minutes) and says nothing about
quality. Stages 1–3 train through :mod:`seedfast.train` (the code behind ``seedfast train``):
:meth:`DemoConfig.stage_tables` gives each stage's settings in the TOML-table form that
:func:`seedfast.train.config_sources.build_config` reads; stage 1 starts from the frozen encoder of
:mod:`seedfast.demo.encoder`. The de-tokenizer trains with its own
:func:`~seedfast.train.pixel_detokenizer.train_pixel_detokenizer` on the stage-2 target embeddings of
real images, as SD-unCLIP's decoder on CLIP image embeddings (see :mod:`seedfast.demo.pipeline`).

Why these choices (measured on the 2-core machine, held-out split):

* scenes of one or two objects, half each (``max_objects=2``), with the relation in the caption
  ("... to the left of ..."), as issue 18 asks: SEED's 32 causal tokens are meant to carry a
  scene's composition, which one object cannot show;
* stand-in target on a 16 × 16 grid (``"stand-in:16"``): from the default 8 × 8 pooling an
  MLP tells the shape of small objects only 62 % of the time, from 16 × 16 always;
* 1200 contrastive steps: on one-object scenes the causal embeddings then tell shape at 99.8 %
  (91 % after 600 steps);
* stage 2 at 4800 steps over a pool of 76 800 images encoded once (``stage2_pool``; 4 epochs):
  on the two-object mix, seed 0, reconstruction went 0.775 → 0.872 against 1200 steps on fresh
  images, and a step fell from ~90 ms to ~70 ms without the frozen ViT and Q-Former;
* stage 3 on rows of 48 ids (``seq_len``, no padding beyond the longest caption), with its codes
  quantised from the stage-2 pool's causal features instead of encoding images (in the demo
  a step 148 → 137 ms), at 2600 steps: on seed 0's tokenizer, 1800 → 2400 steps took captions
  0.834 → 0.859 and text→image on two-object scenes (relation counted) 0.695 → 0.752;
* the captioner taught one caption per image (``caption_order="reading"``): a two-object
  image has two right captions ("a red circle above a blue square", "a blue square below a red
  circle"), and taught both, SEED-LLaMA mixed the two objects' attributes and relations in the
  captions it wrote. Stage 3's image-first rows now carry the one that names the top or left
  object first; its text-first rows keep the dataset's caption, so every relation word still
  prompts an image. Seed 0's demo: captions 0.853 → 0.894 (relation 0.71 → 0.92), two-object
  text→image 0.747 both times. Restating the dataset's own captions in reading order (stage 3
  alone on seed 0's tokenizer) lifted two-object text→image to 0.847 as well, but then
  "below" and "to the right of" never occur in training or prompts, so the demo does not;
* a de-tokenizer with a condition map (``map_channels=4``, ``map_size=16``: the embedding also
  enters as a learned 4 × 16 × 16 layout beside the pixels, see
  :class:`~seedfast.models.pixel_detokenizer.PixelDetokenizerConfig`): one-object scenes,
  reconstruction 0.910 → 0.972 and text→image 0.911 → 0.973 at seed 0; trained on exact target
  embeddings only, it drew 0.995 of the two-object mix's attributes from them;
* its last 800 of 2400 steps conditioned on what the stage-2 tokenizer predicts from the codes
  (``detokenizer_code_steps``), the embeddings it is given at inference: on the second core,
  which otherwise idles once the de-tokenizer is done (seed 0: reconstruction 0.872 → 0.882).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seedfast.models.pixel_detokenizer import PixelDetokenizerConfig

STAGE_NAMES = {1: "tokenizer stage 1 (causal Q-Former, contrastive)",
               2: "tokenizer stage 2 (codebook + generation head)",
               3: "SEED-LLaMA stage 3 (captions <-> codes)"}

# Tiny SEED tokenizer (same structure as the official one; every width scaled down). 4-pixel
# patches keep the frozen random ViT information-preserving (48 numbers per patch → 64 wide);
# 64 codes match the tiny SEED-LLaMA vocabulary; the generation embedding is as wide as the
# stand-in target's pooled pixels (16 × 16 × 3 = 768), so the target loses nothing.
TOKENIZER = dict(
    preset="tiny", image_size=32, patch_size=4,
    vit_width=64, vit_depth=2, vit_heads=4, vit_mlp_dim=128,
    qformer_hidden=64, qformer_layers=4, qformer_heads=4, qformer_intermediate=128,
    codebook_size=64, code_dim=8,
    head_depth=2, head_heads=4, head_mlp_dim=128, image_down_dims=[64, 32, 24], generation_embed_dim=768,
    vocab_size=64, max_text_positions=16, proj_dim=32,
    # Dropout only slows a model this small in a run this short.
    qformer_dropout=0.0,
)
# Tiny SEED-LLaMA over the 322-id layout of seedfast.models.seed_llama.tiny_visual_vocab.
LLM = dict(preset="tiny", dim=128, n_layers=4, n_heads=4, n_kv_heads=2, intermediate_size=352)
# Pixels pooled to 16 × 16 keep the shape of small objects; see the module docstring.
TARGET = "stand-in:16"


@dataclass(frozen=True)
class StageSettings:
    """One training stage: steps, samples per step, peak learning rate, linear warm-up steps."""

    steps: int
    batch: int
    lr: float
    warmup: int


@dataclass(frozen=True)
class DemoConfig:
    """Everything that decides a demo run besides ``--seed`` and ``--out``.

    Attributes
    ----------
    name : str
        ``"full"`` or ``"quick"``.
    image_size : int
        Side of the procedural images, the tokenizer's input and the de-tokenizer's output.
    max_objects : int
        Objects per scene (1 or 2).
    eval_size : int
        Held-out samples the metrics average over.
    show : int
        Held-out samples the report shows one by one.
    stage1, stage2, stage3, detokenizer : StageSettings
    detokenizer_model : PixelDetokenizerConfig
    normaliser_samples : int
        Training images whose target embeddings fix the de-tokenizer's embedding normaliser.
    detokenizer_code_steps : int
        The de-tokenizer's last steps, conditioned on the generation embeddings that the
        stage-2 tokenizer predicts from each image's codes instead of the exact targets (it
        waits for stage 2 before them), so that it learns to draw from what it is given at
        inference; 0: exact targets throughout.
    stage2_pool : int
        0: stage 2 runs the frozen ViT and Q-Former on fresh images every step. Otherwise it
        first encodes this many training images once (``causal`` features and targets, see
        :mod:`seedfast.train.features`) and trains over them for ``steps · batch / pool`` epochs.
    seq_len : int
        Stage 3's padded row: bos, the longest caption (12 words: "a large yellow triangle to
        the right of a large yellow triangle"), ``<img>`` 32 codes ``</img>``, eos is 48 ids; a
        longer row only pads (rows of 56: 187 ms a step against 148 ms, idle, same captions).
    caption_order : str
        Stage 3's ``data.caption_order``: ``"reading"`` teaches the captioner the one caption
        of a two-object image that names the top or left object first; text→image rows keep
        the dataset's caption, in either order.
    caption_temperature : float
        0: greedy captions.
    image_temperature, image_top_k, image_top_p : float, int, float
        Sampling of the 32 codes of a drawn image.
    tokenizer, llm : dict
        ``[tokenizer]`` / ``[llm]`` tables for :mod:`seedfast.train` (preset + overrides).
    target : str
        Stage 2's ``data.target``.
    """

    name: str
    image_size: int
    max_objects: int
    eval_size: int
    show: int
    stage1: StageSettings
    stage2: StageSettings
    stage3: StageSettings
    detokenizer: StageSettings
    detokenizer_model: PixelDetokenizerConfig
    normaliser_samples: int = 4096
    detokenizer_code_steps: int = 0
    stage2_pool: int = 0
    seq_len: int = 48
    caption_order: str = "reading"
    caption_temperature: float = 0.0
    image_temperature: float = 0.0
    image_top_k: int = 0
    image_top_p: float = 1.0
    tokenizer: dict[str, Any] = field(default_factory=lambda: dict(TOKENIZER))
    llm: dict[str, Any] = field(default_factory=lambda: dict(LLM))
    target: str = TARGET

    def __post_init__(self) -> None:
        if not 0 <= self.detokenizer_code_steps <= self.detokenizer.steps:
            raise ValueError(f"DemoConfig: detokenizer_code_steps must be in [0, detokenizer.steps="
                             f"{self.detokenizer.steps}], got {self.detokenizer_code_steps}")

    @classmethod
    def full(cls) -> DemoConfig:
        """The README's demo: one- and two-object scenes, at most 15 minutes on 2 idle CPU cores
        (815.5 s measured at seed 0)."""
        return cls(
            name="full", image_size=32, max_objects=2, eval_size=256, show=16, stage2_pool=76_800,
            stage1=StageSettings(steps=1200, batch=64, lr=2e-3, warmup=20),
            stage2=StageSettings(steps=4800, batch=64, lr=6e-3, warmup=20),
            stage3=StageSettings(steps=2600, batch=32, lr=3e-3, warmup=50),
            detokenizer=StageSettings(steps=2400, batch=32, lr=2e-3, warmup=100), detokenizer_code_steps=800,
            detokenizer_model=PixelDetokenizerConfig(embed_dim=768, image_size=32, sample_steps=12,
                                                     guidance_scale=2.0, map_channels=4, map_size=16),
        )

    @classmethod
    def quick(cls) -> DemoConfig:
        """The same path with few steps (CI smoke test): no claim about quality."""
        full = cls.full()
        return dataclasses.replace(
            full, name="quick", eval_size=16, show=8, normaliser_samples=256, stage2_pool=96,
            stage1=dataclasses.replace(full.stage1, steps=8, batch=16, warmup=2),
            stage2=dataclasses.replace(full.stage2, steps=8, batch=16, warmup=2),
            stage3=dataclasses.replace(full.stage3, steps=8, batch=16, warmup=2),
            detokenizer=dataclasses.replace(full.detokenizer, steps=8, batch=8, warmup=2), detokenizer_code_steps=4,
            detokenizer_model=dataclasses.replace(full.detokenizer_model, sample_steps=2),
        )

    def stage_tables(self, stage: int, *, seed: int, init: Path | None = None,
                     tokenizer: Path | None = None) -> dict[str, Any]:
        """Stage ``stage``'s settings as TOML tables for :func:`seedfast.train.config_sources.build_config`.

        Parameters
        ----------
        stage : {1, 2, 3}
        seed : int
            The demo's seed: data order, dropout and initialisation.
        init : path, optional
            Stage 2: the stage-1 tokenizer it starts from.
        tokenizer : path, optional
            Stage 3: the stage-2 tokenizer that turns images into codes.
        """
        s = {1: self.stage1, 2: self.stage2, 3: self.stage3}[stage]
        tables: dict[str, Any] = {
            "tokenizer": dict(self.tokenizer),
            "llm": dict(self.llm),
            "data": {"source": "procedural", "image_size": self.image_size, "max_objects": self.max_objects,
                     "seed": seed, "text_tokenizer": "words", "text_length": self.tokenizer["max_text_positions"],
                     "seq_len": self.seq_len, "caption_order": self.caption_order, "target": self.target},
            "optim": {"lr": s.lr, "min_lr": s.lr / 10, "warmup_lr": 0.0, "warmup_steps": s.warmup,
                      "total_steps": s.steps, "grad_clip": 1.0},
            "train": {"global_batch": s.batch, "seed": seed, "precision": "fp32", "ckpt_every": s.steps,
                      "keep_last": 1},
            # A freshly initialised tiny LLM learns everything: LoRA would only slow it down.
            "lora": {"enabled": False},
        }
        if stage == 2 and self.stage2_pool:
            tables["data"]["train_size"] = self.stage2_pool
        if init is not None:
            tables["train"]["init"] = str(init)
        if tokenizer is not None:
            tables["data"]["tokenizer"] = str(tokenizer)
        return tables
