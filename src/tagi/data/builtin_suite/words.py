"""Hand-written word lists for the built-in task suite (our own; no third-party data)."""

from __future__ import annotations


def _split(text: str) -> tuple[str, ...]:
    """Whitespace-separated words of a hand-written list."""
    return tuple(text.split())


NOUNS: tuple[str, ...] = _split(
    """
    apple bird boat book bottle box bread bridge brush cake camera candle car card chair cloud coat
    cookie cup desk door dragon drum egg engine farm flag flower forest garden gate glass guitar hammer
    hat horse house island jacket kettle key kite ladder lamp letter lion map market mirror monkey moon
    mountain needle nest ocean onion orange panda paper pencil piano pillow planet plate pocket rabbit
    river road robot rocket rope sandwich school shell ship shoe shop spoon star stone table tent ticket
    tiger towel tower train tree truck wallet wagon window wolf anchor arrow elbow eagle envelope igloo
    insect oven owl umbrella uncle acorn ant axe apron attic oyster ember iron
    """
)

ADJECTIVES: tuple[str, ...] = _split(
    """
    red blue green small large quiet noisy happy sleepy brave clever gentle heavy light old young
    shiny dusty wooden golden silver tiny giant lazy busy calm angry empty icy odd upset eager awake
    idle ugly oval
    """
)

VERBS_PAST: tuple[str, ...] = _split(
    """
    found carried painted watched pushed pulled cleaned opened closed moved dropped lifted washed
    fixed visited followed
    """
)

WORDS: tuple[str, ...] = NOUNS + ADJECTIVES
"""Lowercase words of 3–8 letters used by the single-word tasks."""

VOWELS = "aeiou"

NAMES: tuple[str, ...] = _split(
    "Anna Ben Carla David Emma Farid Grace Hugo Ines Jonas Kira Leo Maya Nora Omar Paul"
)

# Singular -> plural; regular, -es, -ies, -ves and irregular forms.
PLURALS: dict[str, str] = {
    "cat": "cats", "dog": "dogs", "book": "books", "tree": "trees", "car": "cars", "door": "doors",
    "apple": "apples", "river": "rivers", "table": "tables", "pencil": "pencils", "flower": "flowers",
    "garden": "gardens", "window": "windows", "planet": "planets", "rocket": "rockets", "horse": "horses",
    "bird": "birds", "shoe": "shoes", "ticket": "tickets", "mountain": "mountains", "box": "boxes",
    "fox": "foxes", "bus": "buses", "glass": "glasses", "dish": "dishes", "brush": "brushes",
    "church": "churches", "watch": "watches", "bench": "benches", "match": "matches", "kiss": "kisses",
    "dress": "dresses", "city": "cities", "baby": "babies", "party": "parties", "story": "stories",
    "lady": "ladies", "cherry": "cherries", "puppy": "puppies", "family": "families", "day": "days",
    "key": "keys", "toy": "toys", "boy": "boys", "leaf": "leaves", "wolf": "wolves", "knife": "knives",
    "life": "lives", "shelf": "shelves", "half": "halves", "loaf": "loaves", "man": "men",
    "woman": "women", "child": "children", "mouse": "mice", "goose": "geese", "tooth": "teeth",
    "foot": "feet", "person": "people", "ox": "oxen", "sheep": "sheep", "fish": "fish", "deer": "deer",
    "potato": "potatoes", "tomato": "tomatoes", "hero": "heroes", "echo": "echoes", "photo": "photos",
    "piano": "pianos", "cactus": "cacti", "radio": "radios", "zoo": "zoos", "bag": "bags", "cup": "cups",
    "lamp": "lamps", "coat": "coats", "bridge": "bridges", "candle": "candles", "farm": "farms",
    "island": "islands", "rabbit": "rabbits", "spoon": "spoons", "tent": "tents", "engine": "engines",
    "wish": "wishes", "fax": "faxes", "beach": "beaches", "lunch": "lunches", "class": "classes",
    "country": "countries", "berry": "berries", "fly": "flies", "monkey": "monkeys", "valley": "valleys",
    "calf": "calves", "wife": "wives", "thief": "thieves", "scarf": "scarves", "louse": "lice",
    "crisis": "crises", "mosquito": "mosquitoes", "volcano": "volcanoes", "roof": "roofs", "chef": "chefs",
}  # fmt: skip

ANTONYM_PAIRS: tuple[tuple[str, str], ...] = (
    ("hot", "cold"), ("big", "small"), ("fast", "slow"), ("happy", "sad"), ("light", "dark"),
    ("open", "closed"), ("up", "down"), ("early", "late"), ("full", "empty"), ("hard", "soft"),
    ("high", "low"), ("long", "short"), ("old", "new"), ("rich", "poor"), ("strong", "weak"),
    ("thick", "thin"), ("wet", "dry"), ("loud", "quiet"), ("clean", "dirty"), ("true", "false"),
    ("win", "lose"), ("buy", "sell"), ("push", "pull"), ("give", "take"), ("begin", "end"),
    ("arrive", "leave"), ("love", "hate"), ("remember", "forget"), ("accept", "refuse"), ("inside", "outside"),
    ("above", "below"), ("before", "after"), ("always", "never"), ("first", "last"), ("friend", "enemy"),
    ("day", "night"), ("summer", "winter"), ("north", "south"), ("east", "west"), ("question", "answer"),
    ("laugh", "cry"), ("cheap", "expensive"), ("easy", "difficult"), ("safe", "dangerous"), ("wide", "narrow"),
    ("deep", "shallow"), ("brave", "cowardly"), ("polite", "rude"), ("sweet", "sour"), ("awake", "asleep"),
)  # fmt: skip

POSITIVE_WORDS: tuple[str, ...] = _split(
    """
    wonderful excellent delightful amazing fantastic lovely brilliant pleasant superb charming cheerful
    friendly generous joyful marvelous perfect splendid terrific graceful helpful kind beautiful
    comfortable delicious elegant fabulous gorgeous inspiring outstanding refreshing adorable calm
    cozy dazzling enjoyable fine glorious great lively magical nice peaceful relaxing smooth stunning
    sunny thrilling warm
    """
)

NEGATIVE_WORDS: tuple[str, ...] = _split(
    """
    terrible awful horrible dreadful disappointing boring nasty rude annoying miserable ugly broken
    dirty painful useless gloomy noisy clumsy bitter cruel disgusting filthy hostile lousy shabby
    stale tedious unpleasant worthless greasy bland chaotic cold cramped damp dull frustrating grim harsh
    lame messy mediocre poor sloppy slow smelly sour tiring
    """
)

REVIEW_SUBJECTS: tuple[str, ...] = (
    "the movie", "this phone", "the hotel room", "our dinner", "the concert", "this book", "the service",
    "the new sofa", "the coffee", "this game", "the tour guide", "the pizza", "the museum", "this jacket",
)  # fmt: skip

PALINDROMES: tuple[str, ...] = _split(
    "level radar civic kayak noon refer madam rotor stats deed peep tenet racecar solos sagas minim "
    "redder eye dad mom bob nun gag toot pup sees wow pop"
)

_ONES = _split(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen"
)
_TENS = _split("_ _ twenty thirty forty fifty sixty seventy eighty ninety")


def number_to_words(n: int) -> str:
    """English words for 0 ≤ n ≤ 999, e.g. 342 -> "three hundred forty-two"."""
    if not 0 <= n <= 999:
        raise ValueError(f"number_to_words supports 0..999 (got {n})")
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + (f"-{_ONES[ones]}" if ones else "")
    hundreds, rest = divmod(n, 100)
    head = f"{_ONES[hundreds]} hundred"
    return head if rest == 0 else f"{head} {number_to_words(rest)}"
