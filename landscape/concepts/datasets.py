"""Offline concept datasets: sentiment (VADER lexicon), humor (pyjokes against standard-library
docstrings) and neutral reference texts for perplexity."""

from __future__ import annotations

import importlib
import os
import re
from functools import lru_cache
from pathlib import Path

import numpy as np

from landscape.concepts.examples import ConceptExamples
from landscape.core.errors import bad_argument

__all__ = ["CONCEPTS", "concept_examples", "humor", "neutral_texts", "sentiment"]

CONCEPTS = ("sentiment", "humor")

_SENTIMENT_PROMPTS = (
    "How was the concert last night?",
    "What did you think of the new restaurant downtown?",
    "How would you describe your trip to the coast?",
    "What is your opinion of the book you just finished?",
    "How did the meeting with the client go?",
    "How do you feel about your new phone?",
    "What was the hotel like?",
    "How was your first week at the new job?",
    "What do you make of the city's new park?",
    "How was the movie you saw on Friday?",
    "How was the wedding?",
    "What did you think of the museum exhibition?",
    "How was the flight back home?",
    "How did the football match go?",
    "What was the cooking class like?",
    "How was your visit to your grandparents?",
    "What do you think of the new software update?",
    "How was the hiking trip?",
    "How did the job interview go?",
    "What was the neighbourhood festival like?",
)
_SENTIMENT_TEMPLATES = (
    "It was {a}. Honestly, {b} from start to finish.",
    "{A}! I found the whole thing {b}.",
    "I would describe it as {a} and {b}.",
    "In one word: {a}.",
    "Honestly, it felt {a}, and everyone around me seemed {b} too.",
    "My verdict: {a}. Truly {b}.",
    "It left me feeling {a}.",
    "What a {a} experience; the rest was just as {b}.",
)
# Lexicon entries kept out of generated text: profanity and slurs (anywhere in the word) and
# graphic violence (word stems).
_BLOCKED_PARTS = (
    "fuck", "fuk", "shit", "bitch", "bastard", "whore", "slut", "fag", "cock", "dick", "twat", "wank", "cunt",
    "nigg", "asshole", "jackass", "douche", "piss", "damn", "goddam", "porn", "crap", "retard",
)  # fmt: skip
_BLOCKED_STEMS = (
    "rap", "kill", "hell", "sick", "suck", "slave", "smuggl", "victimi", "tortur", "strangl", "brutal", "abus",
    "kiss", "poison", "drown", "casualt", "fatalit", "suicid", "murder", "terror", "racis", "devil", "sex", "tard",
)  # fmt: skip
_ADJECTIVE_ENDINGS = ("ful", "ous", "ive", "able", "ible", "ic", "ent", "ant", "some", "less", "ing", "ed")

_HUMOR_PROMPTS = (
    "Write one sentence about programming.",
    "Say something about Python.",
    "Tell me something about software development.",
    "Share one line about computers.",
    "Write a sentence about code.",
    "Tell me one thing about programmers.",
    "Say one sentence about software.",
    "Write something short about computing.",
    "Say something about databases.",
    "Tell me one thing about debugging.",
    "Write a sentence about the command line.",
    "Share a thought about version control.",
    "Say one thing about compilers.",
    "Write one line about web development.",
    "Tell me something about operating systems.",
    "Say something about programming languages.",
)
_HUMOR_MODULES = (
    "json", "os", "collections", "itertools", "functools", "re", "string", "textwrap", "pathlib", "shutil",
    "glob", "fnmatch", "tempfile", "io", "csv", "random", "statistics", "math", "datetime", "calendar",
    "heapq", "bisect", "copy", "pprint", "enum", "dataclasses", "inspect", "argparse", "logging",
    "subprocess", "threading", "queue", "socket", "urllib.parse", "hashlib", "base64", "zipfile", "tarfile",
)  # fmt: skip
_NEUTRAL_MODULES = (
    "difflib", "decimal", "fractions", "operator", "contextlib", "abc", "numbers", "struct", "codecs",
    "unicodedata", "locale", "gettext", "shlex", "configparser", "sqlite3", "email.utils", "html",
    "xml.dom.minidom", "http.client", "ftplib", "smtplib", "uuid", "secrets", "hmac", "sched", "selectors",
    "asyncio", "concurrent.futures", "multiprocessing", "platform", "sysconfig", "traceback", "warnings",
    "weakref", "timeit", "pickle", "shelve", "gzip", "bz2", "lzma", "wave", "colorsys",
)  # fmt: skip


@lru_cache(maxsize=1)
def _valenced_words(threshold: float = 2.0) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Strongly valenced adjective-like words of the VADER lexicon (|mean rating| >= 2 on its
    -4..4 scale, raters agreeing within a standard deviation of 1.1)."""
    try:
        import vaderSentiment
    except ImportError as err:
        raise bad_argument(
            "sentiment",
            "concept",
            expected="the vaderSentiment package (lm extra)",
            found="not installed",
            fix="pip install 'landscape[lm]'.",
        ) from err
    lexicon = Path(vaderSentiment.__file__).with_name("vader_lexicon.txt")
    positive, negative = [], []
    for line in lexicon.read_text(encoding="utf-8").splitlines():
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        word, mean, std = parts[0], float(parts[1]), float(parts[2])
        if not (word.isalpha() and word.islower() and len(word) >= 4 and std <= 1.1):
            continue
        if any(b in word for b in _BLOCKED_PARTS) or word.startswith(_BLOCKED_STEMS):
            continue
        adjective = word.endswith(_ADJECTIVE_ENDINGS) or (
            word.endswith("y") and not word.endswith(("ty", "ry", "cy", "ly", "fy"))
        )
        if not adjective or word.endswith(("ment", "ness", "ings")):
            continue
        if mean >= threshold:
            positive.append(word)
        elif mean <= -threshold:
            negative.append(word)
    return tuple(sorted(positive)), tuple(sorted(negative))


def _check_n(function: str, n: int, most: int | None = None) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 2 or n % 2:
        raise bad_argument(function, "n", expected="an even number of examples >= 2 (pairs)", found=repr(n))
    if most is not None and n > most:
        raise bad_argument(function, "n", expected=f"at most {most} examples", found=repr(n))


def sentiment(n: int = 256, *, seed: int = 0) -> ConceptExamples:
    """Positive and negative answers to neutral questions, built from the VADER lexicon.

    Each pair shares a prompt and a template (``"It was {a}. Honestly, {b} from start to
    finish."`` and seven others) and differs only in the strongly valenced words filled in,
    so that the label is the only systematic difference. Label 1 is positive.

    Parameters
    ----------
    n
        Number of examples (even: ``n // 2`` pairs over 20 prompts).
    seed
        Seed of the word, template and prompt draw.

    Examples
    --------
    >>> ex = sentiment(4)
    >>> ex.labels
    [1, 0, 1, 0]
    """
    _check_n("sentiment", n)
    positive, negative = _valenced_words()
    rng = np.random.default_rng(seed)
    prompts, completions, labels = [], [], []
    prompt_order = rng.permutation(len(_SENTIMENT_PROMPTS))
    for k in range(n // 2):
        prompt = _SENTIMENT_PROMPTS[prompt_order[k % len(prompt_order)]]
        template = _SENTIMENT_TEMPLATES[rng.integers(len(_SENTIMENT_TEMPLATES))]
        for label, words in ((1, positive), (0, negative)):
            a, b = (words[i] for i in rng.choice(len(words), size=2, replace=False))
            prompts.append(prompt)
            completions.append(template.format(a=a, b=b, A=a.capitalize()))
            labels.append(label)
    return ConceptExamples(prompts, completions, labels=labels, name="sentiment", meta={"seed": seed})


def _first_sentence(doc: str) -> str | None:
    paragraphs = [p for p in re.split(r"\n\s*\n", doc.strip()) if p.strip()]
    for paragraph in paragraphs[:2]:
        text = " ".join(line.strip() for line in paragraph.splitlines())
        # C functions start with their signature ("dumps(obj) -> str"); skip it.
        if re.match(r"^[\w.]+\(.*\)( -> .*)?$", text) or "->" in text[:60]:
            continue
        match = re.match(r"^(.+?[.!?])(\s|$)", text)
        sentence = match.group(1) if match else None
        if sentence and 25 <= len(sentence) <= 140 and sentence[0].isupper() and ">>>" not in sentence:
            if not re.search(r"[`{}\[\]|]|::|\*\*", sentence):
                return sentence
        return None
    return None


@lru_cache(maxsize=4)
def _docstring_sentences(modules: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """(qualified name, first sentence) of the public members' docstrings, in a fixed order."""
    found: list[tuple[str, str]] = []
    seen: set[str] = set()
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ImportError:  # pragma: no cover - a module this Python lacks
            continue
        for attr in sorted(dir(module)):
            if attr.startswith("_"):
                continue
            obj = getattr(module, attr, None)
            doc = getattr(obj, "__doc__", None)
            if not isinstance(doc, str) or getattr(obj, "__module__", None) != name:
                continue
            sentence = _first_sentence(doc)
            if sentence and sentence not in seen:
                seen.add(sentence)
                found.append((f"{name}.{attr}", sentence))
    return tuple(found)


def humor(n: int = 256, *, seed: int = 0) -> ConceptExamples:
    """One-line jokes about programming (``pyjokes``) against first sentences of Python
    standard-library docstrings, as answers to the same neutral prompts.

    Both sides are about programming, so that the topic is held roughly constant and the
    label (1 = joke) is about humor. Each prompt gets one joke and one docstring sentence.

    Examples
    --------
    >>> ex = humor(4)
    >>> ex.labels
    [1, 0, 1, 0]
    """
    try:
        import pyjokes
    except ImportError as err:
        raise bad_argument(
            "humor",
            "concept",
            expected="the pyjokes package (lm extra)",
            found="not installed",
            fix="pip install 'landscape[lm]'.",
        ) from err
    jokes = sorted({j.strip() for j in pyjokes.get_jokes(language="en", category="all") if 20 <= len(j.strip()) <= 200})
    sentences = [s for _, s in _docstring_sentences(_HUMOR_MODULES)]
    _check_n("humor", n, most=2 * min(len(jokes), len(sentences)))
    rng = np.random.default_rng(seed)
    joke_pick = rng.choice(len(jokes), size=n // 2, replace=False)
    doc_pick = rng.choice(len(sentences), size=n // 2, replace=False)
    prompt_order = rng.permutation(len(_HUMOR_PROMPTS))
    prompts, completions, labels = [], [], []
    for k in range(n // 2):
        prompt = _HUMOR_PROMPTS[prompt_order[k % len(prompt_order)]]
        prompts += [prompt, prompt]
        completions += [jokes[joke_pick[k]], sentences[doc_pick[k]]]
        labels += [1, 0]
    return ConceptExamples(prompts, completions, labels=labels, name="humor", meta={"seed": seed})


def neutral_texts(n: int = 32, *, seed: int = 0, source: str = "facts") -> ConceptExamples:
    """Answers that are neither valenced nor funny, for measuring the perplexity (fluency) of
    a guided model.

    Parameters
    ----------
    n
        Number of texts.
    seed
        Seed of the draw.
    source
        ``"facts"``: plain answers to everyday factual questions (48, written for this
        purpose, e.g. "Water boils at 100 degrees Celsius at sea level."); ``"docstrings"``:
        the first sentence of a standard-library docstring as the answer to ``"What does
        NAME do?"`` (modules disjoint from those of :func:`humor`; a few hundred).

    Examples
    --------
    >>> ex = neutral_texts(2)
    >>> len(ex), ex.labels is None
    (2, True)
    """
    if source == "facts":
        pool = list(_FACTS)
    elif source == "docstrings":
        taken = {s for _, s in _docstring_sentences(_HUMOR_MODULES)}
        pool = [(f"What does {name} do?", s) for name, s in _docstring_sentences(_NEUTRAL_MODULES) if s not in taken]
    else:
        raise bad_argument("neutral_texts", "source", expected="'facts' or 'docstrings'", found=repr(source))
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= len(pool):
        raise bad_argument("neutral_texts", "n", expected=f"an integer in [1, {len(pool)}]", found=repr(n))
    rng = np.random.default_rng(seed)
    pick = sorted(rng.choice(len(pool), size=n, replace=False))
    return ConceptExamples(
        [pool[i][0] for i in pick], [pool[i][1] for i in pick], name=f"neutral-{source}", meta={"seed": seed}
    )


_FACTS = (
    ("At what temperature does water boil?", "Water boils at 100 degrees Celsius at sea level."),
    ("What is the capital of France?", "The capital of France is Paris."),
    ("How many days are in a leap year?", "A leap year has 366 days."),
    ("What is photosynthesis?", "Photosynthesis is the process by which plants use sunlight to turn water and carbon dioxide into sugar and oxygen."),
    ("How many continents are there?", "There are seven continents: Africa, Antarctica, Asia, Australia, Europe, North America and South America."),
    ("What is the largest planet in the solar system?", "Jupiter is the largest planet in the solar system."),
    ("How does a bicycle move forward?", "The rider pushes the pedals, which turn a chain that drives the rear wheel."),
    ("What is the chemical symbol for gold?", "The chemical symbol for gold is Au."),
    ("How long does the Earth take to orbit the Sun?", "The Earth takes about 365.25 days to orbit the Sun."),
    ("What do bees produce?", "Bees produce honey and beeswax."),
    ("What is the freezing point of water in Fahrenheit?", "Water freezes at 32 degrees Fahrenheit."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What language is spoken in Brazil?", "The official language of Brazil is Portuguese."),
    ("What is the main gas in the Earth's atmosphere?", "Nitrogen makes up about 78 percent of the Earth's atmosphere."),
    ("How is bread usually made?", "Bread is usually made by mixing flour, water, yeast and salt, letting the dough rise and baking it in an oven."),
    ("What does a thermometer measure?", "A thermometer measures temperature."),
    ("How many minutes are in an hour?", "There are 60 minutes in an hour."),
    ("What is the tallest mountain on Earth?", "Mount Everest is the tallest mountain above sea level, at about 8,849 metres."),
    ("What is a noun?", "A noun is a word that names a person, place, thing or idea."),
    ("How do fish breathe?", "Fish breathe by passing water over their gills, which take oxygen from the water."),
    ("What is the boiling point of water in Fahrenheit?", "Water boils at 212 degrees Fahrenheit at sea level."),
    ("Which organs do we breathe with?", "We breathe with our lungs."),
    ("What is the longest river in Africa?", "The Nile is generally considered the longest river in Africa."),
    ("How many sides does a hexagon have?", "A hexagon has six sides."),
    ("What are the primary colours of light?", "The primary colours of light are red, green and blue."),
    ("What is the capital of Japan?", "The capital of Japan is Tokyo."),
    ("How are rainbows formed?", "Rainbows form when sunlight is refracted, reflected and dispersed by water droplets in the air."),
    ("What is the speed of light?", "Light travels at about 300,000 kilometres per second in a vacuum."),
    ("What is the smallest prime number?", "The smallest prime number is 2."),
    ("What do caterpillars turn into?", "Caterpillars turn into butterflies or moths."),
    ("How many players are on a football team?", "A football team has eleven players on the field."),
    ("What is the capital of Canada?", "The capital of Canada is Ottawa."),
    ("How is paper made?", "Paper is made from wood pulp that is pressed into thin sheets and dried."),
    ("What is the currency of Japan?", "The currency of Japan is the yen."),
    ("What does a compass show?", "A compass shows the direction of magnetic north."),
    ("How many bones are in the adult human body?", "An adult human body has 206 bones."),
    ("What is the largest ocean?", "The Pacific Ocean is the largest ocean on Earth."),
    ("What is an atom made of?", "An atom is made of protons, neutrons and electrons."),
    ("How many hours are in a day?", "There are 24 hours in a day."),
    ("What is the capital of Australia?", "The capital of Australia is Canberra."),
    ("How do plants take in water?", "Plants take in water through their roots."),
    ("What is a triangle?", "A triangle is a shape with three sides and three angles."),
    ("How many weeks are in a year?", "A year has 52 weeks and one or two days."),
    ("What causes the seasons on Earth?", "The seasons are caused by the tilt of the Earth's axis as it orbits the Sun."),
    ("What is the main ingredient of glass?", "Glass is made mainly from sand, which is silica."),
    ("How does a refrigerator keep food cold?", "A refrigerator pumps heat out of its inner compartment using a refrigerant that evaporates and condenses."),
    ("What is the capital of Italy?", "The capital of Italy is Rome."),
    ("What is the most common metal in the Earth's crust?", "Aluminium is the most common metal in the Earth's crust."),
)  # fmt: skip


def concept_examples(concept: str | os.PathLike, *, n: int = 256, seed: int = 0) -> ConceptExamples:
    """The examples of a named concept (``"sentiment"``, ``"humor"``) or of a JSONL file of
    ``{prompt, completion, label}`` objects."""
    from landscape.concepts.examples import load_jsonl

    if str(concept).endswith(".jsonl"):
        return load_jsonl(concept, function="concept_examples")
    if concept == "sentiment":
        return sentiment(n, seed=seed)
    if concept == "humor":
        return humor(n, seed=seed)
    raise bad_argument(
        "concept_examples", "concept", expected=f"one of {CONCEPTS} or a .jsonl path", found=repr(str(concept))
    )
