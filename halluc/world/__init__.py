"""A small synthetic world in exact COCO format on which a small LVLM hallucinates for the same reasons real ones do.

No weights or datasets can be downloaded here, so halluc ships a generator instead. A real LVLM names objects
that are not in the image because (1) language priors learnt from object co-occurrence ("kitchen" -> "fork",
"fork" -> "knife") outweigh (2) weak visual evidence (small, low-contrast, partly hidden objects), and (3) the
pull of the prior grows as a long description moves on to less salient things. The world builds in all three.

**Objects.** 27 real COCO categories (real ids, names and supercategories), each drawn as a glyph whose
identity is shape + colour (e.g. cup = black disc, knife = blue arrow, stop sign = red octagon, cat = white
star). No two categories share a shape-colour pair, no scene uses a shape twice, and shapes that are hard to tell
apart when small (disc, octagon, hexagon) never share a colour. Texture varies per instance and carries no
identity: solid 40%, striped 20%, dotted 20%, outline 20%. The longest side is 9-30 px at 64x64 (it scales with
``image_size``): size class s 14-25% of the image, m 19-36%, l 28-47%; 15% of objects are drawn "distant" (14-19%);
images with 4, 5, 6, 7, 8 objects shrink them by 0.9, 0.8, 0.75, 0.7, 0.65 (never below 14%).

**Scenes.** Four scene types, each with a recognisable background (jittered per image) and a weighted list of 7
typical objects, 3 of which form typical pairs:

================  ====================================  =============================================
scene             background                            objects (weight); pairs
================  ====================================  =============================================
kitchen           beige checkered tiles                 dining table 3, cup 3, fork 2.5, knife 2, bowl 2,
                                                        bottle 1.5, spoon 1.5; fork-knife, spoon-bowl,
                                                        cup-bottle
street            grey asphalt, pale sidewalk band on   car 3.5, person 3, traffic light 2, bus 1.5,
                  top, dashed white lane line           truck 1.5, bicycle 1.5, stop sign 1;
                                                        person-bicycle, car-traffic light, bus-truck
park              speckled grass, pale sky band on top  person 3, dog 3, bench 2, bird 2, frisbee 1.5,
                                                        kite 1.5, sports ball 1; dog-frisbee,
                                                        person-kite, bench-bird
living room       mauve striped wallpaper, wooden       couch 3, tv 3, chair 2, potted plant 1.5,
                  plank floor                           remote 1.5, cat 1.5, book 1.5; tv-remote,
                                                        couch-cat, chair-book
================  ====================================  =============================================

**Splits.** The scene type is uniform. Categories within an image are distinct.

* ``train`` / ``val`` (same distribution, different seed streams): 1-8 objects with P = .06, .11, .16, .18, .17,
  .14, .10, .08 (mean 4.5). Slots are filled in turn: right after an in-scene object whose pair partner is
  missing, the partner fills the next slot with p = 0.6; otherwise a slot is drawn from the scene's list by
  weight with p = 0.85, else uniformly from the categories not on the scene's list. Measured on 4,000
  train images: 88% of objects are in-scene and P(partner | object) is 0.65-0.68 (fork-knife, tv-remote,
  dog-frisbee, car-traffic light).
* ``shift`` (priors broken): the scene's background with 1 (p = 0.6) or 2 (p = 0.4) "anchor" objects drawn from
  the scene's list by weight, never a typical pair, plus 1-6 (P = .15, .2, .2, .2, .15, .1) objects drawn uniformly
  from the categories not on the scene's list. So every typical companion of the anchors (the scene's other listed
  objects, pair partners included) is absent: 30% of objects are in-scene, and P(partner | object) drops to
  0.09-0.11 (a knife next to a fork only happens as two foreign objects in a non-kitchen scene). An image has
  2-8 objects (mean 4.7).
* ``prior_free`` (no co-occurrence at all): train's object counts, categories drawn uniformly from all 27
  whatever the scene. The toy LVLM's vision tower is pretrained on it, apart from the captions' priors, as CLIP
  is trained apart from the data an LVLM is tuned on.

**Weak evidence.** Each object independently: low contrast with p = 0.15 (its colour blended toward the
background with alpha 0.3-0.5). In images with >= 2 objects, with p = 0.3 one object is placed to cover 20-60% of
the box of an earlier (larger) one; otherwise objects do not touch. Larger objects are drawn first, so small
things lie on big ones. A layout in which an object would keep less than 25% of its pixels is redrawn. Measured
on train: 15% of objects are low-contrast, 20% are outlines, 56% have a longest side under 20% of the image,
and 4.5% are occluded (less than 85% of their pixels visible; 20% of images have one).

**Captions.** Five per image in COCO captions format. The first sentence names the scene ("A kitchen scene with
a fork and a knife."); objects follow in order of salience (visible area x contrast, outlines count less) with
true spatial relations (left/right/top/bottom, in the corner of, next to, above, below, partly hidden behind)
and attribute words (size, colour, texture, "faint"). Nouns come only from the official CHAIR synonym list
("puppy", "automobile", "sofa", "television", "table", "man", ...), and no other word maps to a COCO category,
so a caption never mentions an absent object. One caption per image is *detailed* (``"detailed": true``): it
names every object that is not occluded, least salient last, with background remarks ("The tiles are a warm
beige colour.") and sometimes a closing sentence; the other four name a salience-biased subset (weak and
occluded objects are often left out, as human annotators do). Detailed captions average 41 words in 4.5
sentences (up to 99 words), the others 16.

**Files.** ``<out>/instances_<split>.json`` and ``<out>/captions_<split>.json`` (pycocotools loads both) and
PNG images in ``<out>/images/<split>/``. Besides the standard COCO fields, images carry ``scene``; instance
annotations carry ``visible`` (fraction of the glyph's pixels not hidden), ``contrast`` (1.0 or the blend
alpha) and ``texture``; bbox, segmentation polygon and area describe the whole glyph. Image ids are
``1,000,000 x (1 train | 2 val | 3 shift | 4 prior_free) + index + 1``; image ``i`` depends only on (seed, split, i,
image_size), so a build is byte-for-byte reproducible. ``WORLD_VERSION`` names what the generator draws (2.0: up to
8 objects and longer descriptions); the toy splits are cached under it, so a new generator never reads old splits.
"""

from halluc.world.build import (
    SPLITS,
    WORLD_VERSION,
    SplitPaths,
    build_split,
    image_dir,
    scene_types,
    world_categories,
)

__all__ = ["SPLITS", "WORLD_VERSION", "SplitPaths", "build_split", "image_dir", "scene_types", "world_categories"]
