"""English words in API names, shared by the API skills (api.define names things, api.validate checks them).

words("orderItem")      # ["order", "item"]
plural("category")      # "categories"
is_plural("people")     # True; is_plural("data") is True too: a collection of it is fine
"""

from __future__ import annotations

import re

_WORDS = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")

IRREGULAR_PLURALS = {
    "person": "people",
    "child": "children",
    "man": "men",
    "woman": "women",
    "mouse": "mice",
    "goose": "geese",
    "foot": "feet",
    "tooth": "teeth",
    "criterion": "criteria",
    "phenomenon": "phenomena",
    "datum": "data",
    "medium": "media",
    "index": "indices",
    "matrix": "matrices",
    "vertex": "vertices",
    "leaf": "leaves",
    "knife": "knives",
    "life": "lives",
    "wife": "wives",
    "half": "halves",
    "shelf": "shelves",
    "wolf": "wolves",
    "hero": "heroes",
    "potato": "potatoes",
    "tomato": "tomatoes",
    "quiz": "quizzes",
}
# Words whose plural is themselves: a collection of them needs no "s".
UNCOUNTABLE = {
    "news",
    "series",
    "species",
    "information",
    "equipment",
    "software",
    "feedback",
    "metadata",
    "data",
    "media",
    "inventory",
    "staff",
    "sheep",
    "fish",
    "money",
}


def words(text: str) -> list[str]:
    """``orderItem``, ``Order-Item``, ``order_item`` -> ``["order", "item"]``."""
    return [w.lower() for w in _WORDS.findall(text)]


def plural(word: str) -> str:
    """The English plural of one lower-case word."""
    if word in UNCOUNTABLE:
        return word
    if word in IRREGULAR_PLURALS:
        return IRREGULAR_PLURALS[word]
    if word.endswith("y") and len(word) > 1 and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    if word.endswith("is"):
        return word[:-2] + "es"
    if word.endswith(("s", "x", "z", "ch", "sh")):
        return word + "es"
    return word + "s"


def has_plural_ending(word: str) -> bool:
    """An irregular plural, or a regular ``-s`` one (not ``-ss``, ``-us``, ``-is``)."""
    if word in IRREGULAR_PLURALS.values():
        return True
    return word.endswith("s") and not word.endswith(("ss", "us", "is"))


def is_plural(word: str) -> bool:
    """Fine as the name of a collection: a plural form, or an uncountable word."""
    return word in UNCOUNTABLE or has_plural_ending(word)
