"""Tiny stand-ins of the released SEED folders, in the official formats, for the CLI end to end.

* ``quantizer.pt`` + ``eva_vit.pt``: random weights under the official key names (the layout of
  ``seed_quantizer.pt`` / ``eva_vit_g.pth`` at the tiny sizes, 8192 codes), and ``tokenizer/``,
  what ``seedfast convert`` writes from them;
* ``llm/``: a ``LlamaForCausalLM`` over 40194 ids (32000 sentencepiece pieces, ``<img_00000>`` …
  ``<img_08191>``, ``<img>`` = 40192, ``</img>`` = 40193 added with their official ids), its text
  tokenizer files and a ``generation_config.json``;
* ``detokenizer/``: a tiny diffusers ``StableUnCLIPImg2ImgPipeline`` folder;
* ``seedfast-models.json`` naming the three.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from seedfast.models.llama import LlamaConfig
from seedfast.models.llama_config import SEED_LLAMA_VOCAB
from seedfast.models.seed_tokenizer import SeedTokenizer
from seedfast.models.tokenizer_config import SeedTokenizerConfig
from tests.generation.tiny import random_hf_llama
from tests.models.detokenizer_helpers import tiny_unclip_pipeline
from tests.models.seed_llama_helpers import official_tokenizer_folder
from tests.models.test_tokenizer_checkpoints import TINY_DIMS, official_files


def build_released(root: Path) -> Path:
    """Write every stand-in under ``root``; return the folder holding ``seedfast-models.json``."""
    root.mkdir(parents=True, exist_ok=True)
    dims = {**TINY_DIMS, "K": 8192}
    config = SeedTokenizerConfig.tiny(codebook_size=8192)
    quantizer, eva = official_files(dims, device="cpu", seed=4)
    torch.save(quantizer, root / "quantizer.pt")
    torch.save({k: v.half() for k, v in eva.items()}, root / "eva_vit.pt")
    SeedTokenizer.from_official(root / "quantizer.pt", root / "eva_vit.pt", config=config).save(root / "tokenizer")

    added = official_tokenizer_folder(root / "llm", num_codes=8192, vocab_size=32000)
    assert added["<img>"] == 40192 and added["</img>"] == 40193 and added["<img_00000>"] == 32000
    llm = dataclasses.replace(LlamaConfig.tiny(), vocab_size=SEED_LLAMA_VOCAB)
    hf = random_hf_llama(llm, seed=6, std=0.05)
    with torch.no_grad():
        # The codes and </img> likely enough that a caption's text does not stop at once.
        hf.lm_head.weight[2].fill_(0)
    hf.save_pretrained(root / "llm")
    (root / "llm" / "generation_config.json").write_text(json.dumps(
        {"do_sample": True, "temperature": 1.0, "top_p": 0.5, "top_k": 50, "max_new_tokens": 12}))

    tiny_unclip_pipeline(root, embed_dim=config.generation_embed_dim).save_pretrained(root / "detokenizer")
    (root / "seedfast-models.json").write_text(json.dumps(
        {"tokenizer": "tokenizer", "llm": "llm", "detokenizer": "detokenizer", "template": "8b"}))
    return root
