"""The 80 COCO object categories (real ids, names and supercategories), shared across halluc."""

from __future__ import annotations

from dataclasses import dataclass

from halluc.errors import ConfigError

__all__ = ["COCO_CATEGORIES", "COCO_NAMES", "Category", "category_by_name"]


@dataclass(frozen=True)
class Category:
    """One COCO category as it appears in instances_*.json (ids are not contiguous)."""

    id: int
    name: str
    supercategory: str


_TABLE = """\
1 person person|2 bicycle vehicle|3 car vehicle|4 motorcycle vehicle|5 airplane vehicle|6 bus vehicle
7 train vehicle|8 truck vehicle|9 boat vehicle|10 traffic_light outdoor|11 fire_hydrant outdoor
13 stop_sign outdoor|14 parking_meter outdoor|15 bench outdoor|16 bird animal|17 cat animal|18 dog animal
19 horse animal|20 sheep animal|21 cow animal|22 elephant animal|23 bear animal|24 zebra animal
25 giraffe animal|27 backpack accessory|28 umbrella accessory|31 handbag accessory|32 tie accessory
33 suitcase accessory|34 frisbee sports|35 skis sports|36 snowboard sports|37 sports_ball sports
38 kite sports|39 baseball_bat sports|40 baseball_glove sports|41 skateboard sports|42 surfboard sports
43 tennis_racket sports|44 bottle kitchen|46 wine_glass kitchen|47 cup kitchen|48 fork kitchen
49 knife kitchen|50 spoon kitchen|51 bowl kitchen|52 banana food|53 apple food|54 sandwich food
55 orange food|56 broccoli food|57 carrot food|58 hot_dog food|59 pizza food|60 donut food|61 cake food
62 chair furniture|63 couch furniture|64 potted_plant furniture|65 bed furniture|67 dining_table furniture
70 toilet furniture|72 tv electronic|73 laptop electronic|74 mouse electronic|75 remote electronic
76 keyboard electronic|77 cell_phone electronic|78 microwave appliance|79 oven appliance
80 toaster appliance|81 sink appliance|82 refrigerator appliance|84 book indoor|85 clock indoor
86 vase indoor|87 scissors indoor|88 teddy_bear indoor|89 hair_drier indoor|90 toothbrush indoor"""


def _parse(table: str) -> tuple[Category, ...]:
    """Turn the compact table above (underscore = space in names) into Category records."""
    rows = (entry.split() for line in table.splitlines() for entry in line.split("|"))
    return tuple(Category(int(cid), name.replace("_", " "), sup) for cid, name, sup in rows)


COCO_CATEGORIES: tuple[Category, ...] = _parse(_TABLE)
COCO_NAMES: tuple[str, ...] = tuple(c.name for c in COCO_CATEGORIES)
_BY_NAME = {c.name: c for c in COCO_CATEGORIES}


def category_by_name(name: str) -> Category:
    """Look up a COCO category by its official name, so callers never hard-code ids."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ConfigError(f"unknown COCO category {name!r}; valid names: {', '.join(COCO_NAMES)}") from None
