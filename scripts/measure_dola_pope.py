"""Why DoLa moves POPE: the yes-vs-no preference of the final layer and of DoLa's early exits at the answer's
first token.

    python scripts/measure_dola_pope.py [--images toy:shift] [--n-images 100]

POPE questions are built as ``halluc pope`` builds them (all three splits). For each question, at the first answer
token: the log-odds of the token that opens the model's "yes" answers against the one that opens its "no" answers
(read from the model's own greedy answers), from the final layer and from each of DoLa's candidate early exits
(``lm_head`` of the hidden state entering the layer, unnormed, as :mod:`interventions.dola` does); and whether the
"yes" token is the arg-max over the vocabulary, as greedy decoding picks it, of the final logits and of DoLa's
contrast (:func:`interventions.dola.dola_contrast`, default ``relative_top``). Reported separately for
questions whose object is present and absent: where the early exit already separates them as well as the final
layer, the contrast "final minus early" subtracts the image evidence instead of amplifying it.
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from benchmarks import pope
from benchmarks.jobs import pope_questions
from halluc.defaults import default_model
from halluc.imagesets import resolve_images
from halluc.models import LVLM, load_lvlm
from interventions import DoLa
from interventions.dola import dola_contrast


def opening_tokens(lvlm: LVLM, batches: list[tuple[list[Image.Image], list[str]]]) -> tuple[int, int]:
    """The first generated token of the model's greedy "yes" answers and of its "no" answers (the most common)."""
    opening: dict[bool, Counter] = {True: Counter(), False: Counter()}
    for images, prompts in batches:
        ids = lvlm.generate_ids(lvlm.prepare(images, prompts), max_new_tokens=4)
        for row, text in zip(ids, lvlm.processor.tokenizer.batch_decode(ids, skip_special_tokens=True), strict=True):
            opening[bool(pope.parse_answer(text))][int(row[0])] += 1
    missing = [name for side, name in ((True, "yes"), (False, "no")) if not opening[side]]
    if missing:
        raise SystemExit(f"the model never answered {missing[0]!r} to these questions: no opening token to read")
    yes, no = (opening[side].most_common(1)[0][0] for side in (True, False))
    if yes == no:
        raise SystemExit(f"yes and no answers open with the same token ({yes}): first-token odds tell nothing")
    return yes, no


def main() -> None:
    """Measure and print the per-layer yes/no preferences and DoLa's picks."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="checkpoint (default: the shipped toy LLaVA)")
    parser.add_argument("--images", default="toy:shift")
    parser.add_argument("--n-images", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    images = resolve_images(args.images)
    questions = pope_questions(images, n_images=args.n_images)
    lvlm = load_lvlm(args.model or default_model(), dtype="float32")
    by_name = {name: image_id for image_id, name in images.file_names.items()}
    opened = {name: Image.open(images.path(by_name[name])).convert("RGB") for name in {q.image for q in questions}}
    batches = [
        (
            [opened[q.image] for q in chunk],
            [pope.pope_prompt(q.text) for q in chunk],
        )
        for chunk in (questions[i : i + args.batch_size] for i in range(0, len(questions), args.batch_size))
    ]
    layers = DoLa().candidates(lvlm)
    with torch.inference_mode():
        yes, no = opening_tokens(lvlm, batches)
        final, early, greedy_picked, dola_picked = [], [], [], []
        for batch_images, prompts in tqdm(batches, desc="questions", unit="batch"):
            out = lvlm.model(**lvlm.prepare(batch_images, prompts).inputs, output_hidden_states=True)
            logits = out.logits[:, -1].float()  # [rows, vocab]
            exits = torch.stack([lvlm.lm_head(out.hidden_states[layer][:, -1]).float() for layer in layers])
            final.append(logits.log_softmax(-1)[:, [yes, no]])
            early.append(exits.log_softmax(-1)[:, :, [yes, no]])  # [layers, rows, 2]
            greedy_picked.append(logits.argmax(-1))
            dola_picked.append(dola_contrast(logits, exits, DoLa().relative_top)[0].argmax(-1))
    odds = torch.cat(final).diff(dim=-1).neg().squeeze(-1).numpy()  # log p(yes) - log p(no)
    early_odds = torch.cat(early, dim=1).diff(dim=-1).neg().squeeze(-1).numpy()  # [layers, questions]
    greedy_yes, dola_yes = ((torch.cat(picked) == yes).numpy() for picked in (greedy_picked, dola_picked))
    present = np.array([bool(q.label) for q in questions])
    print(f"{lvlm}; {len(questions)} questions on {args.images}; DoLa candidate layers {layers}")
    print(f"{'':30}{'present':>10}{'absent':>10}{'all':>10}")

    def line(name: str, values: np.ndarray, fmt: str) -> None:
        cells = "".join(f"{format(values[mask].mean(), fmt):>10}" for mask in (present, ~present, present | ~present))
        print(f"{name:30}{cells}")

    line("final log-odds yes - no", odds, "+.2f")
    for layer, values in zip(layers, early_odds, strict=True):
        line(f"early exit {layer} log-odds", values, "+.2f")
    line("greedy answers yes (share)", greedy_yes, ".3f")
    line("DoLa answers yes (share)", dola_yes, ".3f")
    line("greedy accuracy", greedy_yes == present, ".3f")
    line("DoLa accuracy", dola_yes == present, ".3f")


if __name__ == "__main__":
    main()
