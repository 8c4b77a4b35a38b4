"""Stage 1: hypernetwork pretraining on plain text (HINT-style a/b/c segments).

Documents (``pretrain.text_files`` — .txt/.jsonl files, folders or ``hf:<dataset>`` names — or, when that
list is empty, the training tasks' own texts) are tokenised with the base model's tokenizer, joined with
a blank-line separator into one token stream and cut into sequences of ``segment_tokens`` tokens. Each
sequence is cut once, at random (seeded by its index), into consecutive segments ``a, b, c``
(:func:`tagi.data.split_abc`)::

    adapter = hypernet(encode(a))                    the hypernetwork reads a (as if it were an instruction)
    loss    = CE(base + adapter reads b -> c)        prompt mode "none": the model sees only b

Segments go back to text (``tokenizer.decode``) so they flow through the same collation as task examples.
The objective is the token-normalised cross-entropy of ``c`` (no end-of-sequence token: ``c`` is a cut).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from tagi.backbones import Backbone, PromptExample
from tagi.config import ExperimentConfig
from tagi.data import read_texts, split_abc, texts_from_tasks
from tagi.data.sni import Task
from tagi.errors import TagiError
from tagi.losses import ce_sum
from tagi.model import TagiModel
from tagi.train.batching import Sample
from tagi.train.common import batch_tokens
from tagi.train.loop import MicroBatch, Term

SEPARATOR = "\n\n"


def pretrain_texts(cfg: ExperimentConfig, tasks: Sequence[Task]) -> list[str]:
    """The documents of stage 1: ``pretrain.text_files``, or the training tasks' texts when none are named."""
    p = cfg.pretrain
    if p.text_files:
        return read_texts(p.text_files, text_field=p.text_field, max_docs=p.max_docs)
    return texts_from_tasks(tasks)


def segment_examples(
    backbone: Backbone, texts: Sequence[str], segment_tokens: int, min_segment: int, seed: int
) -> list[PromptExample]:
    """Pack documents into ``segment_tokens``-token sequences and cut each into ``(a, b, c)`` text examples.

    Returns ``PromptExample(instruction=a, source=b, target=c)`` per sequence; a trailing piece shorter
    than ``3 * min_segment`` tokens is dropped.
    """
    tok = backbone.tokenizer
    sep = tok(SEPARATOR, add_special_tokens=False)["input_ids"]
    stream: list[int] = []
    for ids in tok(list(texts), add_special_tokens=False)["input_ids"]:
        stream.extend(ids + sep)
    chunks = [stream[i : i + segment_tokens] for i in range(0, len(stream), segment_tokens)]
    chunks = [c for c in chunks if len(c) >= 3 * min_segment]
    if not chunks:
        raise TagiError(
            f"pretraining text holds {len(stream)} tokens, too few for one sequence of "
            f"{3 * min_segment} tokens (pretrain.min_segment_tokens={min_segment})"
        )
    out = []
    for i, chunk in enumerate(chunks):
        a, b, c = split_abc(chunk, random.Random(f"tagi-abc:{seed}:{i}"), min_len=min_segment)
        out.append(PromptExample(tok.decode(a), tok.decode(b), tok.decode(c)))
    return out


class PretrainObjective:
    """CE of ``c`` given ``b``, with the adapter the hypernetwork generates from ``a``."""

    def __init__(self, model: TagiModel, examples: Sequence[PromptExample]) -> None:
        self.model, self.examples = model, list(examples)

    def prepare(self, samples: Sequence[Sample]) -> MicroBatch:
        exs = [self.examples[s.index] for s in samples]
        bb = self.model.bb
        batch = bb.collate(exs, "none", add_eos=False).to(bb.device)
        data = (batch, [e.instruction for e in exs])
        return MicroBatch(data, batch.num_label_tokens, len(exs), batch_tokens(batch, bb.family))

    def terms(self, batch: MicroBatch) -> dict[str, Term]:
        mb, segments_a = batch.data
        # no instruction cache: every a segment is new, encoding it once per use costs one frozen forward
        logits, labels, _, _ = self.model(mb, segments_a)  # [M, V], [M]
        return {"ce": Term(ce_sum(logits, labels), 1.0)}
