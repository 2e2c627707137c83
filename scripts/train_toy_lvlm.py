"""Train the embedded toy LVLM: a real ``LlavaForConditionalGeneration`` built the way real LVLMs are.

CLIP-style vision tower (with CLS token) + Llama-style language model (8 layers, 8 heads, width 128). Saved with
``save_pretrained`` (model, byte-level BPE tokenizer, CLIP image processor, chat template) so ``load_lvlm`` and
``AutoModelForImageTextToText`` load it as they load llava-hf checkpoints. Deterministic: fixed seeds, a fixed
number of steps, fixed process and thread counts. Data-parallel over ``--processes`` gloo processes
(DistributedDataParallel), one thread each: these small matrix products scale poorly over threads. fp32: CPU bf16
autocast is ~7x slower here.

Why this recipe (issue 15): a real LVLM hallucinates when the language prior of its pretrained LLM overrides weak
visual evidence that a separately trained vision encoder does deliver. So: (0) the vision tower learns multi-label
recognition on prior-free images (objects drawn whatever the scene), then stays frozen, as CLIP in LLaVA; (1) the
language model is pretrained text-only on generated descriptions with the world's co-occurrence priors; (2) the
projector alone learns to feed image features to it (LLaVA's alignment); (3) projector + language model are tuned
on detailed descriptions and POPE-format yes/no questions with text-only descriptions mixed in.

    python scripts/train_toy_lvlm.py --out halluc/assets/toy-llava            # 18-22 min on 2 idle CPU cores (v14, v15)
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from benchmarks.pope import DEFAULT_SUFFIX, pope_prompt
from halluc.defaults import DESCRIBE_PROMPT
from halluc.imagesets import load_image
from halluc.prompts import existence_question
from halluc.world import build_split, image_dir
from halluc.world.captions import describe
from halluc.world.layout import sample_layout

IMAGE_TOKEN = "<image>"
TEXT_STREAM = 5  # seed stream of the text corpus (the world's splits use 1-4)
# LLaVA-1.5 style conversation: "USER: <image>\n{prompt} ASSISTANT: {answer}</s>"
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %} "
    "{% else %}ASSISTANT: "
    "{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}"
    "</s>{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


@dataclass(frozen=True)
class TrainingData:
    """Everything the training processes share: the prior-heavy train images (preprocessed once) with their objects
    and captions, the prior-free images the vision tower learns on with their recognition targets, and the
    text-only description corpus the language model is pretrained on."""

    images: list[dict]
    objects: dict[int, list[str]]
    captions: dict[int, list[str]]  # five per image, the detailed one first
    vocabulary: list[str]
    pixels: torch.Tensor
    vision_pixels: torch.Tensor
    vision_targets: tuple[torch.Tensor, torch.Tensor]
    texts: list[str]


@dataclass(frozen=True)
class Phase:
    """One language-side training phase: which parts learn, for how long and how fast, and on what mix of data.

    ``trains`` is ``"language model"`` (text-only pretraining), ``"projector"`` (LLaVA's alignment stage) or
    ``"projector + language model"`` (LLaVA's instruction tuning). ``text_share`` is the fraction of examples that
    are text-only descriptions (no image), which keeps the pretrained prior alive during tuning.
    """

    name: str
    steps: int
    lr: float
    trains: str
    questions_per_image: int = 0
    text_share: float = 0.0


@dataclass(frozen=True)
class Example:
    """One training sequence: ``image_index`` None means no image; ``prompt`` None means plain text (pretraining)."""

    image_index: int | None
    prompt: str | None
    answer: str


def build_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on the world's captions and questions (decodes back to exact text)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<s>", "</s>", "<unk>", IMAGE_TOKEN]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        padding_side="left",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tokenizer_corpus(caption_records: list[dict], vocabulary: list[str]) -> list[str]:
    """Every caption, plus each prompt and answer once: the merges come from the captions, and the prompts and
    answers are spelled with them."""
    questions = [existence_question(o) for o in vocabulary]
    captions = [record["caption"] for record in caption_records]
    return [*captions, DESCRIBE_PROMPT, DEFAULT_SUFFIX, "Yes", "No", *questions]


def build_processor(tokenizer: PreTrainedTokenizerFast, image_size: int, patch_size: int) -> LlavaProcessor:
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )


def build_model(tokenizer: PreTrainedTokenizerFast, args: argparse.Namespace) -> LlavaForConditionalGeneration:
    vision = CLIPVisionConfig(
        image_size=args.image_size,
        patch_size=args.patch_size,
        hidden_size=args.vision_dim,
        intermediate_size=args.vision_dim * 2,
        num_hidden_layers=args.vision_layers,
        num_attention_heads=4,
        projection_dim=args.vision_dim,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.dim,
        intermediate_size=args.dim * 8 // 3,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=(args.image_size // args.patch_size) ** 2,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        tie_word_embeddings=True,
    )
    return LlavaForConditionalGeneration(config)


def load_world(root: Path, split: str) -> tuple[list[dict], dict[int, list[str]], dict[int, list[str]], list[str]]:
    """Images, their object names and five captions (the detailed one, which names every visible object, first),
    and the category names of a built split."""
    inst = json.loads((root / f"instances_{split}.json").read_text())
    caps = json.loads((root / f"captions_{split}.json").read_text())
    names = {c["id"]: c["name"] for c in inst["categories"]}
    objects: dict[int, list[str]] = {img["id"]: [] for img in inst["images"]}
    for ann in inst["annotations"]:
        if names[ann["category_id"]] not in objects[ann["image_id"]]:
            objects[ann["image_id"]].append(names[ann["category_id"]])
    captions: dict[int, list[str]] = {img["id"]: [] for img in inst["images"]}
    for ann in caps["annotations"]:
        if ann.get("detailed"):
            captions[ann["image_id"]].insert(0, ann["caption"])
        else:
            captions[ann["image_id"]].append(ann["caption"])
    return inst["images"], objects, captions, sorted(names.values())


def text_corpus(n: int, seed: int, image_size: int) -> list[str]:
    """``n`` detailed descriptions of train-distribution layouts, written without rendering (text is cheap).

    Each comes from a fresh layout of the train split's sampler (scene priors and typical pairs included), on a
    seed stream no built image uses, so the corpus holds many times more scenes than the images. Unrendered objects
    count as fully visible, so these descriptions never say an object is partly hidden.
    """
    texts = []
    for index in tqdm(range(n), desc="text corpus", disable=None):
        scene, layout = sample_layout("train", image_size, np.random.default_rng([seed, TEXT_STREAM, index, 0]))
        captions = describe(scene, layout, image_size, np.random.default_rng([seed, TEXT_STREAM, index, 2]))
        texts.append(next(text for text, detailed in captions if detailed))
    return texts


def make_examples(data: TrainingData, phase: Phase, batch_size: int, seed: int) -> list[Example]:
    """One epoch of ``phase``'s examples, length-bucketed.

    Text pretraining: every corpus description as plain text. Alignment: one caption per image, any of its five
    (mostly brief, as LLaVA's alignment captions). Tuning: each image's detailed description and
    ``questions_per_image`` yes/no questions, plus text-only descriptions (the describe prompt, no image) making up
    ``text_share`` of the examples. Questions are balanced yes/no with negatives drawn uniformly from absent
    categories, as in generic instruction data: co-occurring absent objects are rarely asked about, so the language
    prior is never unlearned.
    """
    rng = random.Random(seed)
    if phase.trains == "language model":
        examples = [Example(None, None, text) for text in data.texts]
        rng.shuffle(examples)
        return length_bucketed(examples, batch_size, rng)
    examples = []
    for idx, img in enumerate(data.images):
        present = data.objects[img["id"]]
        if phase.trains == "projector":
            examples.append(Example(idx, DESCRIBE_PROMPT, rng.choice(data.captions[img["id"]])))
            continue
        examples.append(Example(idx, DESCRIBE_PROMPT, data.captions[img["id"]][0]))
        absent = [c for c in data.vocabulary if c not in present]
        for _ in range(phase.questions_per_image):
            positive = rng.random() < 0.5
            obj = rng.choice(present if positive else absent)
            suffix = DEFAULT_SUFFIX if rng.random() < 0.5 else ""  # POPE's exact prompt half of the time
            prompt = pope_prompt(existence_question(obj), suffix)
            examples.append(Example(idx, prompt, "Yes" if positive else "No"))
    n_text = round(len(examples) * phase.text_share / (1 - phase.text_share))
    examples += [Example(None, DESCRIBE_PROMPT, text) for text in rng.sample(data.texts, min(n_text, len(data.texts)))]
    rng.shuffle(examples)
    return length_bucketed(examples, batch_size, rng)


def length_bucketed(examples: list[Example], batch_size: int, rng: random.Random) -> list[Example]:
    """Reorder so that each batch holds examples of similar length (descriptions together, questions together).

    Padding a batch to its longest description wastes about half the compute; windows of 16 batches are sorted by
    length, cut into batches, and the batches shuffled, so the mix seen over an epoch is unchanged.
    """
    window = 16 * batch_size
    batches = []
    for start in range(0, len(examples), window):
        chunk = sorted(examples[start : start + window], key=lambda ex: len(ex.prompt or "") + len(ex.answer))
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return [ex for batch in batches for ex in batch]


class Encoder:
    """Turns examples into token ids: the chat prompt (image tokens expanded by the processor, or none for a
    text-only example) + the answer; plain text is BOS + text."""

    def __init__(self, processor: LlavaProcessor, probe_image: Image.Image):
        self.processor, self.probe, self.cache = processor, probe_image, {}
        self.tok = processor.tokenizer

    def prompt_ids(self, prompt: str, with_image: bool) -> list[int]:
        if (prompt, with_image) not in self.cache:
            content = [{"type": "image"}] if with_image else []
            messages = [{"role": "user", "content": [*content, {"type": "text", "text": prompt}]}]
            text = self.processor.apply_chat_template(messages, add_generation_prompt=True)
            enc = self.processor(images=[self.probe] if with_image else None, text=[text], return_tensors="pt")
            self.cache[prompt, with_image] = enc["input_ids"][0].tolist()
        return self.cache[prompt, with_image]

    def encode(self, ex: Example) -> tuple[list[int], list[int]]:
        # the answer is spelled as it follows "ASSISTANT:", with a leading space, in every kind of example
        answer = self.tok(" " + ex.answer, add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id]
        if ex.prompt is None:
            return [self.tok.bos_token_id, *answer], [-100, *answer]
        prompt = self.prompt_ids(ex.prompt, ex.image_index is not None)
        return prompt + answer, [-100] * len(prompt) + answer


def collate(batch: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id)
    labels = torch.full((len(batch), width), -100)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (ids, lab) in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(lab)] = torch.tensor(lab)
        mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask}


def pixel_tensor(processor: LlavaProcessor, root: Path, split: str, images: list[dict]) -> torch.Tensor:
    """All images of a built split, preprocessed once (N, 3, H, W)."""
    folder = image_dir(root, split)
    chunks = []
    for start in tqdm(range(0, len(images), 512), desc=f"preprocessing {split} images"):
        batch = [load_image(folder / img["file_name"]) for img in images[start : start + 512]]
        chunks.append(processor.image_processor(batch, return_tensors="pt")["pixel_values"])
    return torch.cat(chunks)


def vision_targets(root: Path, split: str, images: list[dict], grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-label targets per image (N, C) and per patch of the ``grid`` x ``grid`` layout (N, grid*grid, C)."""
    inst = json.loads((root / f"instances_{split}.json").read_text())
    column = {c["id"]: i for i, c in enumerate(sorted(inst["categories"], key=lambda c: c["name"]))}
    row = {img["id"]: i for i, img in enumerate(images)}
    image_level = torch.zeros(len(images), len(column))
    patch_level = torch.zeros(len(images), grid * grid, len(column))
    for ann in inst["annotations"]:
        i, c = row[ann["image_id"]], column[ann["category_id"]]
        cell = images[i]["width"] / grid
        x, y, w, h = ann["bbox"]
        image_level[i, c] = 1
        for gy in range(int(y // cell), min(grid, int((y + h) // cell) + 1)):
            for gx in range(int(x // cell), min(grid, int((x + w) // cell) + 1)):
                patch_level[i, gy * grid + gx, c] = 1
    return image_level, patch_level


class RecognitionHeads(torch.nn.Module):
    """The vision tower with linear multi-label heads on its CLS token and on every patch token (stage 0 only)."""

    def __init__(self, tower: torch.nn.Module, n_classes: int):
        super().__init__()
        dim = tower.config.hidden_size
        self.tower, self.cls, self.patch = tower, torch.nn.Linear(dim, n_classes), torch.nn.Linear(dim, n_classes)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.tower(pixel_values=pixel_values).last_hidden_state
        return self.cls(hidden[:, 0]), self.patch(hidden[:, 1:])


def pretrain_vision(model: LlavaForConditionalGeneration, pixels: torch.Tensor, targets, args, rank: int) -> None:
    """Stage 0, like the pretrained CLIP every LLaVA starts from: multi-label object recognition on the CLS token
    and on every patch token, so patch features carry what lies where before the language model sees them.

    ``pixels`` are prior-free images (objects drawn independently of the scene): a tower trained on the
    prior-heavy train images learns the scene prior itself (on v10 it false-alarmed on 24% of absent in-scene
    objects on shift), leaving the language model nothing to override."""
    tower = model.model.vision_tower
    tower.post_layernorm.requires_grad_(False)  # LLaVA reads hidden states, never the pooled output
    recognizer = DistributedDataParallel(RecognitionHeads(tower, targets[0].shape[1]))
    optimizer = torch.optim.AdamW(
        [p for p in recognizer.parameters() if p.requires_grad], lr=args.vision_lr, weight_decay=0.01
    )
    generator = torch.Generator().manual_seed(args.seed)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    bar = tqdm(range(args.vision_steps), desc="vision pretraining", disable=rank != 0)
    for _ in bar:  # every rank draws the same global batch and takes its share of it
        idx = torch.randint(0, len(pixels), (128,), generator=generator)[rank :: args.processes]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            cls_logits, patch_logits = recognizer(pixels[idx])
            loss = loss_fn(cls_logits.float(), targets[0][idx]) + loss_fn(patch_logits.float(), targets[1][idx])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{loss.item():.4f}")


def phases(args: argparse.Namespace) -> list[Phase]:
    """The language side of LLaVA's recipe, after a text-only pretraining of the language model.

    (1) Text pretraining: the language model alone on the description corpus, where it learns the scene priors as
    a pretrained LLM brings them. (2) Alignment: only the projector learns, on captions, so image features land in
    the pretrained model's input space (LLaVA-1.5's stage 1). (3) Tuning: projector + language model at a lower
    learning rate on detailed descriptions and yes/no questions, with text-only descriptions mixed in so the prior
    is kept (LLaVA-1.5 mixes text-only conversations into its instruction data)."""
    return [
        Phase("text pretraining", args.text_steps, args.text_lr, "language model"),
        Phase("alignment", args.align_steps, args.align_lr, "projector"),
        Phase(
            "tuning",
            args.tune_steps,
            args.tune_lr,
            "projector + language model",
            questions_per_image=args.questions_per_image,
            text_share=args.text_share,
        ),
    ]


def batches(data: TrainingData, phase: Phase, index: int, args: argparse.Namespace, rank: int):
    """This rank's share of every global batch of ``phase``, epoch after epoch (each epoch freshly drawn)."""
    size = args.text_batch_size if phase.trains == "language model" else args.batch_size
    for epoch in itertools.count():
        seed = args.seed + 1000 * index + epoch
        examples = make_examples(data, phase, size, seed)
        if len(examples) < size:  # else this loop would never yield
            raise ValueError(f"{phase.name}: an epoch has {len(examples)} examples, fewer than a batch of {size}")
        for start in range(0, len(examples) - size + 1, size):
            yield examples[start : start + size][rank :: args.processes]


def trainable_parts(model: LlavaForConditionalGeneration, phase: Phase) -> list[torch.nn.Parameter]:
    """Switch on the gradients of the parts ``phase`` trains (the vision tower stays frozen, as CLIP in LLaVA)."""
    model.requires_grad_(False)
    projector, language = model.model.multi_modal_projector, [model.model.language_model, model.lm_head]
    parts = {"language model": language, "projector": [projector], "projector + language model": [projector, *language]}
    for part in parts[phase.trains]:
        part.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


def schedule(phase: Phase) -> Callable[[int], float]:
    """Learning-rate multiplier per step: linear warm-up over 2% of the steps, then cosine decay to zero."""
    warmup = max(1, phase.steps // 50)

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, phase.steps - warmup)))

    return multiplier


def train_language_side(
    model: LlavaForConditionalGeneration, processor: LlavaProcessor, data: TrainingData, args, rank: int
) -> dict[str, float]:
    """Text pretraining, alignment and tuning in turn; returns the last loss of each phase that ran (a phase of 0
    steps, e.g. ``--tune-steps 0`` for a checkpoint before tuning, is skipped)."""
    tokenizer = processor.tokenizer
    encoder = Encoder(processor, Image.new("RGB", (args.image_size, args.image_size)))
    model.train()
    losses = {}
    for index, phase in enumerate(phases(args)):
        if not phase.steps:
            continue
        trainable = trainable_parts(model, phase)
        parallel = DistributedDataParallel(model)  # rebuilt per phase: DDP fixes its parameter set when built
        optimizer = torch.optim.AdamW(trainable, lr=phase.lr, weight_decay=0.01, betas=(0.9, 0.98))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule(phase))
        stream = batches(data, phase, index, args, rank)
        bar = tqdm(range(phase.steps), desc=phase.name, disable=rank != 0)
        for step in bar:
            batch = next(stream)
            inputs = collate([encoder.encode(ex) for ex in batch], tokenizer.pad_token_id)
            with_image = [ex.image_index for ex in batch if ex.image_index is not None]
            if with_image:  # LLaVA fills the image tokens in order, so rows without an image simply have none
                inputs["pixel_values"] = data.pixels[with_image]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                loss = parallel(**inputs).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
        losses[phase.name] = loss.item()
    model.requires_grad_(False)
    model.eval()
    return losses


def run_rank(rank: int, args: argparse.Namespace, processor: LlavaProcessor, data: TrainingData, port: int) -> None:
    """One data-parallel process: both stages on its share of every batch; rank 0 saves the model."""
    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=args.processes)
    torch.manual_seed(args.seed)  # every rank builds the same initial weights
    model = build_model(processor.tokenizer, args)
    if rank == 0:
        print(f"parameters: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M, vocab {len(processor.tokenizer)}")
    started = time.monotonic()
    pretrain_vision(model, data.vision_pixels, data.vision_targets, args, rank)
    vision_minutes = (time.monotonic() - started) / 60
    final_losses = train_language_side(model, processor, data, args, rank)
    minutes = (time.monotonic() - started) / 60 - vision_minutes
    if rank == 0:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out, safe_serialization=True)
        processor.save_pretrained(out)
        record = {
            "args": recorded_args(args),
            "vision_minutes": round(vision_minutes, 2),
            "train_minutes": round(minutes, 2),
            "final_losses": final_losses,
        }
        (out / "TRAINING.json").write_text(json.dumps(record, indent=2))
        print(f"saved to {out} after {vision_minutes:.1f} + {minutes:.1f} min, final losses {final_losses}")
    dist.destroy_process_group()


def train(args: argparse.Namespace) -> None:
    """Build (or reuse) the train and prior-free worlds, the text corpus, tokenizer, processor and preprocessed
    images, then train in parallel."""
    random.seed(args.seed)
    torch.set_num_threads(args.threads * args.processes)
    work = Path(args.world or tempfile.mkdtemp(prefix="halluc-world-"))
    for split in ("train", "prior_free"):
        if not (work / f"instances_{split}.json").exists():
            build_split(split, args.n_train, work, seed=args.seed)
    images, objects, captions, vocabulary = load_world(work, "train")
    vision_images = load_world(work, "prior_free")[0]
    all_captions = json.loads((work / "captions_train.json").read_text())["annotations"]
    processor = build_processor(
        build_tokenizer(tokenizer_corpus(all_captions, vocabulary), args.vocab_size),
        args.image_size,
        args.patch_size,
    )
    data = TrainingData(
        images,
        objects,
        captions,
        vocabulary,
        pixel_tensor(processor, work, "train", images).share_memory_(),
        pixel_tensor(processor, work, "prior_free", vision_images).share_memory_(),
        vision_targets(work, "prior_free", vision_images, args.image_size // args.patch_size),
        text_corpus(args.text_steps * args.text_batch_size, args.seed, args.image_size),
    )
    with socket.socket() as probe:  # a free local port for the process group
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    torch.multiprocessing.spawn(run_rank, args=(args, processor, data, port), nprocs=args.processes)


def recorded_args(args: argparse.Namespace) -> dict[str, object]:
    """The training arguments minus machine-local paths (the world is rebuilt from ``n_train`` and ``seed``)."""
    return {k: v for k, v in vars(args).items() if k not in ("out", "world")}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="halluc/assets/toy-llava")
    p.add_argument("--world", default=None, help="directory holding (or receiving) the built train split")
    p.add_argument("--n-train", type=int, default=16000, help="images of the train and of the prior-free split")
    p.add_argument("--vision-steps", type=int, default=3000, help="stage-0 recognition steps on prior-free images")
    p.add_argument("--vision-lr", type=float, default=2e-3)
    p.add_argument("--text-steps", type=int, default=400, help="text-only pretraining steps (one corpus pass)")
    p.add_argument("--text-batch-size", type=int, default=64)
    p.add_argument("--text-lr", type=float, default=2e-3)
    p.add_argument("--align-steps", type=int, default=150, help="projector-only alignment steps")
    p.add_argument("--align-lr", type=float, default=1e-3)
    p.add_argument("--tune-steps", type=int, default=2000, help="projector + language model tuning steps")
    p.add_argument("--tune-lr", type=float, default=1e-3)
    p.add_argument("--questions-per-image", type=int, default=1, help="tuning: yes/no questions per description")
    p.add_argument("--text-share", type=float, default=0.2, help="tuning: share of text-only descriptions")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--patch-size", type=int, default=16)
    p.add_argument("--vision-dim", type=int, default=128)
    p.add_argument("--vision-layers", type=int, default=3)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--vocab-size", type=int, default=600)
    p.add_argument("--processes", type=int, default=2, help="data-parallel processes (gloo); one per core")
    p.add_argument("--threads", type=int, default=1, help="threads per process")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (7x slower on CPUs without native bf16)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


if __name__ == "__main__":
    train(parse_args())
