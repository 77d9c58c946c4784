"""Examples (prompt/completion pairs with labels) and their tokenization.

A pair is rendered the way the model sees it at generation time: the prompt as a user turn
through the chat template (when the tokenizer has one) ending in the assistant header, then
the completion's tokens. Raw texts (plain strings) are tokenized as they are.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from landscape.core.errors import bad_argument

__all__ = ["ConceptExamples", "Encoded", "as_examples", "encode", "load_jsonl"]


@dataclass
class ConceptExamples:
    """Prompt/completion pairs with optional binary labels and groups.

    ``groups`` name the prompt each example answers (validation splits keep a group
    together); ``raw`` marks plain texts that are tokenized without the chat template.

    Examples
    --------
    >>> ex = ConceptExamples(["Hi?", "Hi?"], ["Great!", "Awful."], labels=[1, 0])
    >>> len(ex), ex[0]["completion"], ex.groups
    (2, 'Great!', ['Hi?', 'Hi?'])
    """

    prompts: list[str]
    completions: list[str]
    labels: list[int] | None = None
    groups: list[str] | None = None
    raw: bool = False
    name: str = "custom"
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.prompts) != len(self.completions):
            raise bad_argument(
                "ConceptExamples",
                "completions",
                expected=f"one completion per prompt ({len(self.prompts)})",
                found=f"{len(self.completions)} completions",
            )
        if self.labels is not None and len(self.labels) != len(self.prompts):
            raise bad_argument(
                "ConceptExamples",
                "labels",
                expected=f"one label per example ({len(self.prompts)})",
                found=f"{len(self.labels)} labels",
            )
        if self.groups is None:
            self.groups = list(self.prompts)
        elif len(self.groups) != len(self.prompts):
            raise bad_argument(
                "ConceptExamples",
                "groups",
                expected=f"one group per example ({len(self.prompts)})",
                found=f"{len(self.groups)} groups",
            )

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record: dict[str, Any] = {"prompt": self.prompts[index], "completion": self.completions[index]}
        if self.labels is not None:
            record["label"] = self.labels[index]
        record["group"] = self.groups[index] if self.groups is not None else self.prompts[index]
        return record

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def subset(self, indices: Iterable[int]) -> ConceptExamples:
        idx = list(indices)
        return ConceptExamples(
            [self.prompts[i] for i in idx],
            [self.completions[i] for i in idx],
            labels=None if self.labels is None else [self.labels[i] for i in idx],
            groups=None if self.groups is None else [self.groups[i] for i in idx],
            raw=self.raw,
            name=self.name,
            meta=dict(self.meta),
        )

    def to_jsonl(self, path: str | os.PathLike) -> Path:
        """Write one ``{prompt, completion, label, group}`` object per line."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as f:
            for record in self:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        return path


def load_jsonl(path: str | os.PathLike, *, function: str = "load_jsonl") -> ConceptExamples:
    """Read examples from a JSONL file of ``{"prompt", "completion", "label"}`` objects
    (``label`` and ``group`` optional)."""
    path = Path(path)
    if not path.exists():
        raise bad_argument(function, "examples", expected="an existing JSONL file", found=repr(str(path)))
    records = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise bad_argument(
                    function, "examples", expected="one JSON object per line", found=f"line {number}: {err}"
                ) from err
    examples = as_examples(records, function=function)
    examples.name = path.stem
    return examples


def as_examples(examples: Any, *, function: str = "hidden_states", argument: str = "examples") -> ConceptExamples:
    """Normalise what users pass: :class:`ConceptExamples`, a JSONL path, dicts with
    ``prompt``/``completion`` (and ``label``, ``group``), ``(prompt, completion[, label])``
    tuples, or plain strings (raw texts)."""
    if isinstance(examples, ConceptExamples):
        if len(examples) == 0:
            raise bad_argument(function, argument, expected="at least one example", found="none")
        return examples
    if isinstance(examples, (str, os.PathLike)) and str(examples).endswith(".jsonl"):
        return load_jsonl(examples, function=function)
    if isinstance(examples, str) or not isinstance(examples, Sequence):
        raise bad_argument(
            function,
            argument,
            expected="a list of {prompt, completion, label} dicts, (prompt, completion) tuples, strings, "
            "a ConceptExamples or a .jsonl path",
            found=examples,
        )
    items = list(examples)
    if not items:
        raise bad_argument(function, argument, expected="at least one example", found="an empty list")
    if all(isinstance(item, str) for item in items):
        return ConceptExamples([""] * len(items), list(items), raw=True)
    prompts, completions, labels, groups = [], [], [], []
    for i, item in enumerate(items):
        if isinstance(item, Mapping):
            if "prompt" not in item or "completion" not in item:
                raise bad_argument(
                    function,
                    argument,
                    expected="dicts with 'prompt' and 'completion' keys",
                    found=f"item {i} with keys {sorted(item)}",
                )
            prompts.append(str(item["prompt"]))
            completions.append(str(item["completion"]))
            labels.append(item.get("label"))
            groups.append(str(item.get("group", item["prompt"])))
        elif isinstance(item, (tuple, list)) and len(item) in (2, 3) and all(isinstance(s, str) for s in item[:2]):
            prompts.append(item[0])
            completions.append(item[1])
            labels.append(item[2] if len(item) == 3 else None)
            groups.append(item[0])
        else:
            raise bad_argument(
                function,
                argument,
                expected="all items of one kind: dicts, (prompt, completion[, label]) tuples or strings",
                found=f"item {i}: {item!r}"[:120],
            )
    known = [label for label in labels if label is not None]
    if known and len(known) != len(labels):
        raise bad_argument(function, argument, expected="a label on every example or on none", found="some missing")
    return ConceptExamples(prompts, completions, labels=labels if known else None, groups=groups)


@dataclass
class Encoded:
    """Token ids of one example and the span ``[start, stop)`` read for its representation
    (the completion; the whole text for raw texts; the last prompt token when the
    completion is empty)."""

    ids: list[int]
    start: int
    stop: int


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def use_chat(tokenizer: Any, chat: bool | None, *, function: str) -> bool:
    if chat is None:
        return has_chat_template(tokenizer)
    if chat and not has_chat_template(tokenizer):
        raise bad_argument(
            function,
            "chat",
            expected="a tokenizer with a chat template when chat=True",
            found=f"{type(tokenizer).__name__} without one",
            fix="Pass chat=None or False, or set tokenizer.chat_template.",
        )
    return bool(chat)


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def special_prefix(tokenizer: Any) -> list[int]:
    """The special tokens the tokenizer puts before a text (BOS for Llama, none for GPT-2)."""
    return list(tokenizer("", add_special_tokens=True)["input_ids"])


def prompt_ids(tokenizer: Any, prompt: str, *, chat: bool) -> list[int]:
    """Token ids the model reads before it writes its answer to ``prompt``."""
    if chat:
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
        )
        if isinstance(rendered, Mapping):  # some versions return a BatchEncoding
            rendered = rendered["input_ids"]
        return list(rendered)
    return special_prefix(tokenizer) + _ids(tokenizer, prompt)


def _joined(prompt: str, completion: str) -> str:
    # Without a chat template the completion continues the prompt; a space separates
    # words unless either side already brings whitespace.
    if prompt and completion and not prompt[-1].isspace() and not completion[0].isspace():
        return " " + completion
    return completion


def encode(
    tokenizer: Any, examples: ConceptExamples, *, chat: bool, max_completion: int | None = None
) -> list[Encoded]:
    """Tokenize examples; ``max_completion`` drops completion tokens past that many (a causal
    model's earlier representations do not depend on them)."""
    out = []
    prefix_cache: dict[str, list[int]] = {}
    special = special_prefix(tokenizer)
    for prompt, completion in zip(examples.prompts, examples.completions):
        if examples.raw:
            ids = special + _ids(tokenizer, completion)
            start = len(special) if len(ids) > len(special) else 0
            stop = len(ids)
        else:
            if prompt not in prefix_cache:
                prefix_cache[prompt] = prompt_ids(tokenizer, prompt, chat=chat)
            prefix = prefix_cache[prompt]
            tail = _ids(tokenizer, completion if chat else _joined(prompt, completion))
            if not prefix and not tail:
                ids, start, stop = [], 0, 0
            elif tail:
                ids, start, stop = prefix + tail, len(prefix), len(prefix) + len(tail)
            else:
                ids, start, stop = prefix, len(prefix) - 1, len(prefix)
        if max_completion is not None and stop - start > max_completion:
            stop = start + max_completion
            ids = ids[:stop]
        out.append(Encoded(ids, start, stop))
    return out
