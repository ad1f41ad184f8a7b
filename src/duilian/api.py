"""The Python API: text in, couplets out.

    import duilian
    c = duilian.load()                      # the embedded default model, or duilian.load("path/to/hf-dir")
    c.complete("丹枫江冷人初去", n=5)          # -> [Candidate(text="...", score=..., checks=...), ...]
    c.acrostic("春福", length=7)             # -> [AcrosticCouplet(upper=..., lower=...), ...]

This module owns the text side: it reads each 上联 (scripts, unknown characters), has rules.lower_spec turn it into
a decode.LineSpec (the form rules position by position), and turns what decode.py writes, without ever seeing text,
back into ranked, checked candidates. The model is a gpt.GPT (model.load_gpt reads a directory or a Hub id).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch

from . import decode
from .calibrate import MAX_WEIGHT as MAX_CALIBRATION_WEIGHT
from .hengpi import Hengpi
from .pairs import MAX_WEIGHT as MAX_PAIR_WEIGHT
from .pairs import PairTable
from .rules import LEVEL, OBLIQUE, FormChecks, check_pair, decoder_tones, lower_spec, tone_of
from .script import (
    SCRIPTS,
    answer_script,
    char_forms,
    each_simplified,
    each_traditional,
    to_simplified,
    to_simplified_apart,
    to_traditional,
)
from .text import MAX_CHARS, CoupletInputError, clean_upper, is_han, is_punct, normalize
from .tokenizer import Tokenizer, default_tokenizer

if TYPE_CHECKING:
    from .compose import ComposedCouplet

DEFAULT_MODEL_DIR = Path(__file__).parent / "models" / "default"
ACROSTIC_LOWERS = 3
"""下联 candidates written per 藏头 上联; the best one is kept."""
HENGPI_OFFERED = 3
"""横批 offered with a couplet by the CLI (--hengpi) and the web page."""
MAX_HENGPI = 10
DEFAULT_REVERSE_WEIGHT = 0.5
"""λ for a model trained on backward lines whose config.json names none (chosen on the validation splits: see the
default model's card)."""
MAX_REVERSE_WEIGHT = 5.0
"""Largest noisy-channel weight accepted: beyond a few the ranking ignores the forward model altogether."""

_TONE_CODE = decoder_tones()


class NoDefaultModelError(FileNotFoundError):
    """duilian.load() without a model directory, and no default model is embedded yet."""


@dataclass
class Candidate:
    """One 下联 with its score breakdown (score = logprob + decode.RULE_WEIGHT × rule_score - calibration, then the
    reranking terms below where they are on)."""

    text: str
    score: float
    logprob: float
    """Mean per-token log-prob of the 下联, each token's among all Han characters and the punctuation mark forced at
    its place (decode.Hypothesis.logprob): the form rules decide what is written, not how it counts."""
    rule_score: float
    """Fraction of rhythm positions whose tones oppose the 上联's (decode.RULE_NEUTRAL when none count)."""
    checks: FormChecks
    calibration: float = 0.0
    """What the model's calibration took off the score: calibration_weight × the mean penalty of the 下联's
    characters (duilian.calibrate; 0 without one): lines of characters the model over-writes (宏图, 和谐) rank lower."""
    unknown: tuple[str, ...] = ()
    """Characters of the 上联 the model does not know: it read them as [UNK] (form and tones still use them)."""
    hengpi: tuple[Hengpi, ...] = ()
    """横批 for this couplet, best first (Options.hengpi of them; none unless asked)."""
    reverse: float | None = None
    """Mean per-token log-prob of the 上联 given this 下联, log P(上联 | 下联), read by the same model backward; None
    when the candidates were not reranked (a model trained forward only, or reverse_weight=0). `score` then
    includes reverse_weight × this."""
    prior: float | None = None
    """Mean per-token log-prob of this 下联 read as a line from [CLS], whatever it answers; None unless the anti-LM
    term ranks (lm_weight > 0): `score` then includes - lm_weight × this, so a line likely everywhere counts less."""
    pos: float | None = None
    """词性对仗: the share of positions whose part-of-speech classes agree (duilian.pos); None unless asked for
    (Options.pos) or when no position counts."""
    pairs: float | None = None
    """What the aligned pairs of this 下联 against the 上联 are worth (duilian.pairs: 天 against 地, 辛丑 against
    丁未, as often as people write them); None unless the pair term ranks (pair_weight > 0): `score` then
    includes pair_weight × this."""

    def to_dict(self) -> dict:
        return {"text": self.text, "score": self.score, "logprob": self.logprob, "rule_score": self.rule_score,
                "calibration": self.calibration, "reverse": self.reverse, "prior": self.prior, "pos": self.pos,
                "pairs": self.pairs,
                "valid": self.checks.valid, "checks": self.checks.to_dict(), "unknown": list(self.unknown),
                **_hengpi_dict(self.hengpi)}


@dataclass
class AcrosticCouplet:
    """A 藏头 couplet: the 上联 starts with the first head, the 下联 with the second."""

    upper: str
    lower: str
    score: float
    """Mean of the two lines' scores."""
    checks: FormChecks
    hengpi: tuple[Hengpi, ...] = ()
    """横批 for this couplet, best first (none unless asked)."""
    pos: float | None = None
    """词性对仗 of the two lines (Options.pos; see Candidate.pos)."""

    def to_dict(self) -> dict:
        return {"upper": self.upper, "lower": self.lower, "score": self.score, "valid": self.checks.valid,
                "checks": self.checks.to_dict(), "pos": self.pos, **_hengpi_dict(self.hengpi)}


def _hengpi_dict(hengpi: tuple[Hengpi, ...]) -> dict:
    """The "hengpi" entry of a result's JSON: present only when 横批 were asked for."""
    return {"hengpi": [{"text": h.text, "score": h.score} for h in hengpi]} if hengpi else {}


@dataclass(frozen=True)
class Options:
    """What complete() and acrostic() accept besides the text; see decode.Search for the search fields."""

    n: int = 5
    method: str = "sample"
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    first: str = "beam"
    """With sampling, where the first candidate comes from: beam (the likeliest line a width-5 beam search finds,
    then samples; the default, best on the test split), greedy (the greedy line is among the candidates, ranked
    by score) or sample (decode.Search.first)."""
    seed: int | None = None
    """Same seed, same 上联, same options -> same candidates, whatever else is in the batch."""
    allow_upper_chars: bool = False
    """Let the 下联 use the 上联's characters (never at the same position)."""
    require_level_ending: bool = True
    """A 上联 ending 仄 gets a 下联 ending 平 (a hard rule); False leaves the final tone free."""
    script: str = "auto"
    """The answer's script: auto (the 上联's), simplified or traditional (script.SCRIPTS)."""
    hengpi: int = 0
    """横批 suggested with each couplet, best first (0: none; HENGPI_OFFERED is what the page and CLI show)."""
    pos: bool = False
    """Score 词性对仗 too (duilian.pos: jieba's tags, position by position; `Candidate.pos`). Off by default: jieba
    takes 1-2 s to load, longer than the whole of a first `duilian generate`; the server loads it once."""
    lm_weight: float | None = None
    """β of the anti-LM term, score - β · log P(下联) read as a line from [CLS] (per token): a line likely whatever
    the 上联 (万象新, 步步高) counts less. None: the model's default (config.json "duilian"), else 0."""
    calibration_weight: float | None = None
    """Weight of the model's calibration (duilian.calibrate): each character the model writes far more often than
    people do costs weight × its penalty, in the beam search and the ranking. None: the model's own (config.json
    "duilian" → "calibration"), 0 for a model without one; 0: off."""
    reverse_weight: float | None = None
    """λ of the noisy-channel ranking, score + λ · log P(上联 | 下联) (per token): a 下联 from which the 上联 can be
    recovered answers it; a generic one does not. None: the model's own default (config.json "duilian"), 0 for a
    model that never read lines backward; 0: off."""

    pair_weight: float | None = None
    """Weight of the aligned-pair term (duilian.pairs): score + weight × what the 下联's pairs against the 上联 are
    worth. None: the model's own (config.json "duilian" → "pairs"), 0 for a model without a table; 0: off."""

    def __post_init__(self):
        if self.script not in SCRIPTS:
            raise ValueError(f"script must be one of {', '.join(SCRIPTS)}, not {self.script!r}")
        if not isinstance(self.hengpi, int) or not 0 <= self.hengpi <= MAX_HENGPI:
            raise ValueError(f"hengpi is a count from 0 to {MAX_HENGPI}, not {self.hengpi!r}")
        if self.reverse_weight is not None and not 0 <= self.reverse_weight <= MAX_REVERSE_WEIGHT:
            raise ValueError(f"reverse_weight must be between 0 and {MAX_REVERSE_WEIGHT}, not {self.reverse_weight}")
        if self.lm_weight is not None and not 0 <= self.lm_weight <= MAX_REVERSE_WEIGHT:
            raise ValueError(f"lm_weight must be between 0 and {MAX_REVERSE_WEIGHT}, not {self.lm_weight}")
        if self.pair_weight is not None and not 0 <= self.pair_weight <= MAX_PAIR_WEIGHT:
            raise ValueError(f"pair_weight must be between 0 and {MAX_PAIR_WEIGHT:g}, not {self.pair_weight}")
        if self.calibration_weight is not None and not 0 <= self.calibration_weight <= MAX_CALIBRATION_WEIGHT:
            raise ValueError(f"calibration_weight must be between 0 and {MAX_CALIBRATION_WEIGHT:g}, "
                             f"not {self.calibration_weight}")

    def search(self) -> decode.Search:
        return decode.Search(method=self.method, n=self.n, temperature=self.temperature, top_k=self.top_k,
                             top_p=self.top_p, first=self.first)


def load(model: str | Path | None = None, device: str = "cpu", dtype: torch.dtype = torch.float32,
         quantize: str | None = None) -> "Couplets":
    """A Couplets for a HuggingFace GPT-2 directory (a duilian export or a copy of uer/gpt2-chinese-couplet), a
    Hugging Face Hub id such as "uer/gpt2-chinese-couplet" (fetched into huggingface_hub's cache, or read from it
    offline), an already loaded model (a gpt.GPT or a transformers GPT2LMHeadModel), or None for the embedded
    default model. A directory is read straight into tensors (model.load_gpt): transformers is not imported.

    quantize="int8" decodes with int8 weights (CPU only; see gpt.GPT.for_decoding): several times faster on a
    CPU, log-probs within a few hundredths of a nat. `score` always uses the model's own weights."""
    if model is None:
        if not (DEFAULT_MODEL_DIR / "config.json").is_file():
            raise NoDefaultModelError(
                "no default model yet; train one with `duilian prepare ... && duilian train ... && "
                "duilian export ...` and pass --model DIR"
            )
        model = DEFAULT_MODEL_DIR
    if isinstance(model, (str, Path)):
        from .model import is_hf_model_dir, load_gpt, model_dir

        path = model_dir(model)
        if not is_hf_model_dir(path):
            hint = "; it looks like a training run: `duilian export --checkpoint RUN --out DIR` first" \
                if (path / "checkpoints").is_dir() or (path / "final.pt").is_file() else ""
            raise FileNotFoundError(f"{path} is not a HuggingFace model directory{hint}")
        return Couplets(load_gpt(path, dtype=dtype, device=device), Tokenizer.from_dir(path), quantize, path)
    return Couplets(model.to(device).eval(), quantize=quantize)


@dataclass(frozen=True)
class Line:
    """A 上联 as the user wrote it, as the model reads it, and the script to answer in (Couplets.read)."""

    text: str
    """Normalised, in the user's script: what the 下联 is checked against (its 重字, and no copy in either
    script)."""
    model_text: str
    """Simplified, regional variants unified: what the model reads (the corpus is simplified); a character
    whose simplified form the model lacks stays as typed if the model knows that."""
    script: str
    """"simplified" or "traditional": the script of the answer."""
    shown: str
    """The 上联 in the answer's script, with the same 重字 as `text`: a character that simplifying would merge
    with another of the line stays as typed (script.to_simplified_apart)."""
    unknown: tuple[str, ...]
    """Characters of the 上联, as typed, that the model does not know in either script: read as [UNK]."""


class Couplets:
    """A model and tokenizer ready to write couplets. Build it with duilian.load()."""

    def __init__(self, model, tokenizer: Tokenizer | None = None, quantize: str | None = None,
                 model_dir: Path | None = None):
        """model: a gpt.GPT, or a transformers GPT2LMHeadModel (its weights are used as they are, not copied).
        model_dir: the directory it was read from, where the files config.json names beside the weights live
        (the aligned-pair table); None: no such files."""
        from .gpt import GPT

        if not isinstance(model, GPT):
            from .model import from_transformers

            model = from_transformers(model)
        self.model = model
        self.tokenizer = tokenizer or default_tokenizer()
        if model.config.vocab_size != len(self.tokenizer):
            raise ValueError(f"the model's vocabulary has {model.config.vocab_size} tokens, the tokenizer "
                             f"{len(self.tokenizer)}: not a duilian / gpt2-chinese-couplet model")
        self.device = model.device
        self.n_positions = model.n_positions
        self.max_chars = min(MAX_CHARS, (self.n_positions - 3) // 2)
        self.vocab = vocab_tables(self.tokenizer).to(self.device)
        self.quantize = quantize
        """None, or "int8": the weights the decoder runs with (gpt.QUANTIZE)."""
        self.model_dir = Path(model_dir) if model_dir is not None else None
        self.net = model.for_decoding(self.vocab.ids, quantize=quantize)
        self.penalty = self._penalty()
        """[V'] each emittable token's calibration penalty (duilian.calibrate), None for a model without a table."""
        # score() uses the model's own weights, whatever the decoder runs with.
        self._scorer = self.net if quantize is None else None

    # --- input ------------------------------------------------------------------------------------------------
    def read(self, upper: str, script: str = "auto") -> Line:
        """A 上联 as typed -> a Line, or CoupletInputError saying why it cannot be used (no Chinese, Latin
        letters, emoji, control characters, too long). Traditional and variant characters are read in
        simplified; a character the model still does not know is read as [UNK]."""
        text = clean_upper(upper, self.max_chars)
        simplified = to_simplified(text)
        answer = answer_script(text, script)
        if answer == "simplified":
            shown = to_simplified_apart(text)
        else:  # a traditional answer stands beside the 上联 in traditional, as typed where it was typed so
            shown = text if simplified != text else to_traditional(text)
        # Per character, the simplified form if the model knows it, else the form typed if it knows that (a BERT
        # vocabulary holds 鑊 but not 镬), else [UNK]; unknown characters are named as the user typed them.
        index = self.tokenizer.index
        model_text = "".join(s if s in index or t not in index else t for s, t in zip(simplified, text))
        unknown = dict.fromkeys(t for m, t in zip(model_text, text) if m not in index)
        return Line(text, model_text, answer, shown, tuple(unknown))

    def clean(self, upper: str) -> str:
        """The normalised 上联, or CoupletInputError saying why it cannot be used."""
        return self.read(upper).text

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer.encode_chars(text, unknown_as_unk=True)

    # --- writing ----------------------------------------------------------------------------------------------
    def complete(self, upper: str, n: int = 5, **options) -> list[Candidate]:
        """Up to n distinct 下联 for `upper`, best first."""
        return self.complete_batch([upper], n, **options)[0]

    def complete_batch(self, uppers: list[str], n: int = 5, *, seed: int | None | list[int | None] = None,
                       temperature: float | list[float] = Options.temperature, top_k: int | list[int] = Options.top_k,
                       top_p: float | list[float] = Options.top_p, wanted: list[Callable[[], bool]] | None = None,
                       whole_pool: bool = False, **options) -> list[list[Candidate]]:
        """complete() for many 上联 in one decoding pass. `seed`, `temperature`, `top_k` and `top_p` are each one
        value for all, or a list with one per 上联 (seed None: unseeded); either way each 上联 gets what it would
        get alone with its own. Temperatures must be all greedy (below decode.GREEDY_BELOW) or none: greedy
        changes the search's shape. `wanted`: one callable per 上联, asked between decoding steps; a 上联 whose
        callable returns False leaves the pass and gets [] (the server's requests whose clients have left).
        `whole_pool`: when the candidates are reranked, every one the search found (the beam's 5 and the samples),
        best first, not only the first n (for benchmarks/rerank_sweep.py, which re-sorts them)."""
        seeds = _one_per_line(seed, len(uppers), "seeds")
        if any(s is not None and not isinstance(s, int) for s in seeds):
            raise ValueError("a seed is an int or None")
        sampling = {"temperature": _one_per_line(temperature, len(uppers), "temperatures"),
                    "top_k": _one_per_line(top_k, len(uppers), "top_k values"),
                    "top_p": _one_per_line(top_p, len(uppers), "top_p values")}
        wanted = _one_per_line(wanted, len(uppers), "wanted checks")
        # The search takes the first line's options (each line's own reach the decoder in its spec).
        opts = Options(n=n, **options, **{name: values[0] for name, values in sampling.items() if values})
        lines = [self.read(u, opts.script) for u in uppers]
        specs = [replace(self.lower_spec(line, opts), seed=s, temperature=t, top_k=k, top_p=p, wanted=w)
                 for line, s, t, k, p, w in zip(lines, seeds, *sampling.values(), wanted)]
        search, weight, lm_weight = opts.search(), self.reverse_weight(opts), self.lm_weight(opts)
        pair_weight = self.pair_weight(opts)
        reranked = bool(weight or lm_weight or pair_weight)
        if reranked and search.method == "sample" and search.first == "beam" and not search.greedy:
            search = replace(search, leads=decode.LEAD_BEAM)  # the beam's alternatives join the pool to rerank
        hyps = decode.generate(self.net, self.vocab, specs, search, bias=self.calibration_bias(opts))
        none = [[None] * len(hs) for hs in hyps]
        reverse = self._reverse(lines, hyps) if weight else none
        prior = self._line_prior(hyps) if lm_weight else none
        out = []
        for line, hs, rs, ps in zip(lines, hyps, reverse, prior):
            pair = self._pairs(line, hs) if pair_weight else [None] * len(hs)
            cands = [self._candidate(line, h, opts, r, weight, p, lm_weight, q, pair_weight)
                     for h, r, p, q in zip(hs, rs, ps, pair)]
            if reranked:
                ranked = sorted(range(len(cands)), key=lambda i: -cands[i].score)
                if not whole_pool and search.leads > 1:
                    # the best of the whole pool leads; the rest are the samples, which vary, not the other beams
                    ranked = ranked[:1] + [i for i in ranked[1:] if not hs[i].beam]
                cands = [cands[i] for i in ranked][:None if whole_pool else n]
            out.append(cands)
        return out

    def reverse_weight(self, opts: "Options") -> float:
        """The noisy-channel λ these options ask for: theirs, else the model's default; 0 for a model that never
        read a line backward (its log P(上联 | 下联) would mean nothing)."""
        info = self.model.config.duilian or {}
        if not (info.get("lines") or {}).get("backward") or self.tokenizer.reverse_id is None:
            return 0.0
        return float(info.get("reverse_weight", DEFAULT_REVERSE_WEIGHT) if opts.reverse_weight is None
                     else opts.reverse_weight)

    def lm_weight(self, opts: "Options") -> float:
        """The anti-LM β these options ask for: theirs, else the model's default (config.json "duilian"), else 0."""
        if opts.lm_weight is not None:
            return float(opts.lm_weight)
        return float((self.model.config.duilian or {}).get("lm_weight", 0.0))

    def pair_weight(self, opts: "Options") -> float:
        """The aligned-pair weight these options ask for: theirs, else the model's own; 0 for a model without a
        table."""
        if opts.pair_weight == 0:  # off: the table is not even read (a broken one can still be switched off)
            return 0.0
        return self._own_weight(self.pair_table is not None, opts.pair_weight, "pairs")

    def _own_weight(self, has_table: bool, asked: float | None, section: str) -> float:
        """A table's weight: the one asked for, else the model's own (config.json "duilian" → section → "weight");
        0 for a model without the table, whatever was asked."""
        if not has_table:
            return 0.0
        if asked is not None:
            return float(asked)
        return float(self.model.config.duilian[section].get("weight", 0.0))

    @cached_property
    def pair_table(self) -> "PairTable | None":
        """The model's aligned-pair table (duilian.pairs), read at first use; None for a model without one."""
        info = (self.model.config.duilian or {}).get("pairs") or {}
        path = self.model_dir / info["file"] if info.get("file") and self.model_dir else None
        if path is None or not path.is_file():
            return None
        table = PairTable.load(path)
        if table.vocab_size != len(self.tokenizer):
            raise ValueError(f"{path} counts a vocabulary of {table.vocab_size} tokens, the model has "
                             f"{len(self.tokenizer)}")
        return table

    def _pairs(self, line: Line, hyps: list[decode.Hypothesis]) -> list[float]:
        """Per hypothesis, what its pairs against the 上联 are worth (PairTable.score, the model's bigram share)."""
        upper, bigram = self._ids(line.model_text), float(self.model.config.duilian["pairs"].get("bigram", 0.0))
        return [self.pair_table.score(upper, list(h.tokens), bigram) for h in hyps]

    def calibration_weight(self, opts: "Options") -> float:
        """The calibration weight these options ask for: theirs, else the model's own; 0 for a model without a
        table."""
        return self._own_weight(self.penalty is not None, opts.calibration_weight, "calibration")

    def calibration_bias(self, opts: "Options") -> torch.Tensor | None:
        """decode.generate's `bias` for these options: -weight × penalty, None when the weight is 0."""
        weight = self.calibration_weight(opts)
        return -weight * self.penalty if weight else None

    def _penalty(self) -> torch.Tensor | None:
        table = ((self.model.config.duilian or {}).get("calibration") or {}).get("penalty")
        if not table:
            return None
        penalty = torch.zeros(len(self.vocab), device=self.device)
        for ch, value in table.items():
            i = self.tokenizer.index.get(ch)
            sub = int(self.vocab.to_sub[i]) if i is not None else -1
            if sub >= 0:  # a character the decoder never writes (traditional, or not in this vocabulary) is moot
                penalty[sub] = float(value)
        return penalty

    def _line_prior(self, hyps: list[list[decode.Hypothesis]]) -> list[list[float]]:
        """Per hypothesis, the mean log-prob of the 下联's tokens and the '-' after it read as a line from [CLS]: how
        likely the line is whatever it answers (万象新 and 步步高 lines are likely everywhere)."""
        tok = self.tokenizer
        seqs = [[tok.cls_id, *h.tokens, tok.separator_id] for hs in hyps for h in hs]
        flat = [float(lp.mean()) for lp in self._teacher_forced(seqs, [1] * len(seqs), self.net)]
        out, i = [], 0
        for hs in hyps:
            out.append(flat[i:i + len(hs)])
            i += len(hs)
        return out

    def _reverse(self, lines: list[Line], hyps: list[list[decode.Hypothesis]]) -> list[list[float]]:
        """Per hypothesis, mean log P(上联 tokens, [SEP] | [CLS] [REV] 下联 -): how well the 下联 predicts its 上联."""
        tok = self.tokenizer
        seqs, starts = [], []
        for line, hs in zip(lines, hyps):
            upper = self._ids(line.model_text) + [tok.sep_id]
            for h in hs:
                prompt = [tok.cls_id, tok.reverse_id, *h.tokens, tok.separator_id]
                seqs.append(prompt + upper)
                starts.append(len(prompt))
        logps = self._teacher_forced(seqs, starts, self.net)
        flat = [float(lp[torch.tensor(s[st:]) != tok.unk_id].mean()) for lp, s, st in zip(logps, seqs, starts)]
        out, i = [], 0
        for hs in hyps:
            out.append(flat[i:i + len(hs)])
            i += len(hs)
        return out

    def lower_spec(self, upper: Line | str, opts: Options, first: str | None = None, at: int = 0) -> decode.LineSpec:
        """The rules for a 下联 of `upper` (a Line, or a clean simplified line), position by position
        (rules.lower_spec). `first` forces the character at position `at` (嵌字; simplified, in the vocabulary)."""
        line = upper if isinstance(upper, Line) else Line(upper, upper, "simplified", upper, ())
        return lower_spec(line, self.tokenizer, self._same_character_ids, allow_upper_chars=opts.allow_upper_chars,
                          require_level_ending=opts.require_level_ending, first=first, at=at, seed=opts.seed)

    @cached_property
    def _same_character_ids(self) -> dict[str, tuple[int, ...]]:
        # Per instance: the module-level cache hashes the whole tokenizer at every call.
        return _same_character_ids(self.tokenizer)

    def _candidate(self, line: Line, h: decode.Hypothesis, opts: Options, reverse: float | None = None,
                   weight: float = 0.0, prior: float | None = None, lm_weight: float = 0.0,
                   pairs: float | None = None, pair_weight: float = 0.0) -> Candidate:
        lower = self.tokenizer.decode(h.tokens)  # simplified: the decoder writes only simplified tokens
        text = to_traditional(lower) if line.script == "traditional" else lower
        # Checked against the 上联 the user sent, in both scripts: 云 beside 雲 is a copy.
        checks = check_pair(line.text, text, allow_upper_chars=opts.allow_upper_chars, forms=char_forms)
        score = (h.score + (weight * reverse if reverse is not None else 0.0)
                 - (lm_weight * prior if prior is not None else 0.0)
                 + (pair_weight * pairs if pairs is not None else 0.0))
        calibration = h.logprob + decode.RULE_WEIGHT * h.rule_score - h.score  # what the bias took off
        return Candidate(text=text, score=score, logprob=h.logprob, rule_score=h.rule_score, checks=checks,
                         calibration=calibration if abs(calibration) > 1e-6 else 0.0,
                         unknown=line.unknown, hengpi=self._hengpi(line.model_text, lower, opts.hengpi, line.script),
                         reverse=reverse, prior=prior, pos=parallelism(line.model_text, lower) if opts.pos else None,
                         pairs=pairs)

    # --- 横批 -------------------------------------------------------------------------------------------------
    def hengpi(self, upper: str, lower: str, k: int = HENGPI_OFFERED) -> list[Hengpi]:
        """k 横批 for the couplet (upper, lower), best first, in the couplet's script (duilian.hengpi: a pool of
        idioms and the corpus's 4-character lines ranked by the couplet's meaning, with this model's own
        character embeddings as one of the signals)."""
        line = self.read(upper)
        return list(self._hengpi(line.model_text, to_simplified(normalize(lower)), k, line.script))

    def _hengpi(self, upper: str, lower: str, k: int, script: str) -> tuple[Hengpi, ...]:
        if not k:
            return ()
        from . import hengpi

        found = hengpi.suggest(upper, lower, k, embeddings=self.model.transformer.wte.weight.detach(),
                               tokens=self.tokenizer.tokens)
        if script == "traditional":
            found = [Hengpi(to_traditional(h.text), h.score) for h in found]
        return tuple(found)

    def compose(self, words, length: int = 7, n: int = 5, occasion: str | None = None, year: int | None = None,
                **options) -> list["ComposedCouplet"]:
        """Up to n whole couplets about a few words (a theme, a name, an occasion's words, a year's animal), each
        with 3 横批, best first (duilian.compose)."""
        from .compose import compose

        return compose(self, words, length=length, n=n, occasion=occasion, year=year, opts=Options(n=n, **options))

    def acrostic(self, heads: str, length: int = 7, n: int = 5, position: int | str = 1, *,
                 wanted: Callable[[], bool] | None = None, **options) -> list[AcrosticCouplet]:
        """Up to n 嵌字 couplets: a 上联 of `length` characters holding heads[0] at `position` (1-based, or "last";
        1 is 藏头, 鹤顶格) and ending 仄, written by the model from [CLS]; then its 下联 holding heads[1] at the same
        place, under all the usual rules. A character that cannot stand where it is asked (a level 平 character
        last in the 上联, an oblique 仄 one last in the 下联) is refused with the reason. `wanted`, asked between
        decoding steps: once it returns False, decoding stops and the answer is []."""
        opts = Options(n=n, **options)
        heads = normalize(heads) if isinstance(heads, str) else heads
        if not isinstance(heads, str) or len(heads) != 2 or not all(is_han(ch) for ch in heads):
            raise CoupletInputError("藏头 needs exactly two Chinese characters, e.g. 春福")
        script = answer_script(heads, opts.script)
        heads = to_simplified(heads)  # the model writes simplified; the answer is converted back below
        if heads[0] == heads[1]:
            raise CoupletInputError("the two 藏头 characters must differ (the 下联 may not copy the 上联 in place)")
        unknown = self.tokenizer.unknown(heads)
        if unknown:  # a head is written, not read: it must be a token the model can emit
            raise CoupletInputError(f"the 藏头 characters {''.join(unknown)} are not ones this model can write")
        h0, h1 = self._ids(heads)
        if not isinstance(length, int) or not 2 <= length <= self.max_chars:
            raise CoupletInputError(f"the 藏头 couplet length must be between 2 and {self.max_chars}, not {length}")
        at = embed_position(position, length, heads)
        # 1) The 上联s: free Han characters, the first head at its place and nowhere else, no second head
        #    anywhere, ending 仄.
        upper_spec = decode.LineSpec(
            prompt=[self.tokenizer.cls_id],
            length=length,
            forced=[h0 if i == at else -1 for i in range(length)],
            repeat_of=list(range(length)),
            distinct=False,
            banned_at=[-1 if i == at else h0 for i in range(length)],
            banned=[h1],
            final_pos=length - 1,
            final_rule=decode.END_OBLIQUE,
            seed=opts.seed,
            wanted=wanted,
        )
        uppers = decode.generate(self.net, self.vocab, [upper_spec], opts.search())[0]
        if not uppers:
            return []
        # 2) One 下联 per 上联, the best of a few, starting with the second head.
        upper_texts = [self.tokenizer.decode(h.tokens) for h in uppers]
        lower_opts = Options(**{**opts.__dict__, "n": ACROSTIC_LOWERS})
        specs = [replace(self.lower_spec(u, lower_opts, first=heads[1], at=at), wanted=wanted) for u in upper_texts]
        lowers = decode.generate(self.net, self.vocab, specs, lower_opts.search())
        if wanted is not None and not wanted():
            return []
        out = []
        for text, up, lows in zip(upper_texts, uppers, lowers):
            if lows:
                low = lows[0]
                lower = self.tokenizer.decode(low.tokens)
                banners = self._hengpi(text, lower, opts.hengpi, script)  # both as the model wrote them: simplified
                pos = parallelism(text, lower) if opts.pos else None  # both simplified, as written
                if script == "traditional":
                    text, lower = to_traditional(text), to_traditional(lower)
                out.append(AcrosticCouplet(upper=text, lower=lower, score=(up.score + low.score) / 2,
                                           checks=check_pair(text, lower, opts.allow_upper_chars, char_forms),
                                           hengpi=banners, pos=pos))
        return sorted(out, key=lambda c: -c.score)

    # --- scoring ----------------------------------------------------------------------------------------------
    def score(self, uppers: list[str], lowers: list[str]) -> list[float]:
        """Sum of the log-probs of each 下联's tokens and the closing [SEP], given [CLS] 上联 '-' (no
        constraints: the model's own distribution). Both lines are read in simplified; unknown 上联
        characters as [UNK]. A 下联 character outside the vocabulary adds nothing (the model never writes
        [UNK]): `known_tokens` counts what was scored."""
        if len(uppers) != len(lowers):
            raise ValueError(f"{len(uppers)} 上联 but {len(lowers)} 下联")
        seqs, starts = [], []
        for u, l in zip(uppers, lowers):
            prompt = [self.tokenizer.cls_id, *self._ids(self.read(u).model_text), self.tokenizer.separator_id]
            lower = to_simplified(normalize(l))
            if not lower:
                raise CoupletInputError("the 下联 is empty")
            seqs.append(prompt + self._ids(lower) + [self.tokenizer.sep_id])
            starts.append(len(prompt))
        if len(max(seqs, key=len, default=[])) > self.n_positions:
            raise CoupletInputError(f"a couplet is longer than the model's {self.n_positions} positions")
        if self._scorer is None:
            self._scorer = self.model.for_decoding(self.vocab.ids)
        unk = self.tokenizer.unk_id
        return [lp[torch.tensor(s[st:]) != unk].sum().item()
                for lp, s, st in zip(self._teacher_forced(seqs, starts, self._scorer), seqs, starts)]

    def _teacher_forced(self, seqs: list[list[int]], starts: list[int], net) -> list[torch.Tensor]:
        """Per sequence, the log-probs [len - start] of its tokens from `start` on, each given those before it
        (the model's own distribution, no masks), in batches of 64 right-padded rows."""
        out = []
        with torch.inference_mode():
            for i in range(0, len(seqs), 64):
                batch, first = seqs[i:i + 64], starts[i:i + 64]
                T = max(len(s) for s in batch)
                # Right padding: causal attention never lets a real token see the padding after it.
                ids = torch.tensor([s + [self.tokenizer.pad_id] * (T - len(s)) for s in batch], device=self.device)
                logp = torch.log_softmax(net.full_logits(ids).float(), dim=-1)  # (B, T, V)
                for b, (s, st) in enumerate(zip(batch, first)):
                    target = torch.tensor(s[st:], device=self.device)
                    out.append(logp[b, st - 1:len(s) - 1].gather(1, target[:, None])[:, 0].cpu())
        return out

    def known_tokens(self, lower: str) -> int:
        """How many tokens `score` scores for this 下联: its characters in the vocabulary, and [SEP]."""
        text = to_simplified(normalize(lower))
        return 1 + sum(ch in self.tokenizer.index for ch in text)


def embed_position(position: int | str, length: int, heads: str) -> int:
    """The 0-based place of the 嵌字 characters, or CoupletInputError: a place past the line, or a character whose
    tone the line's end forbids there (the 上联 ends 仄, the 下联 平)."""
    if position == "last" or position == -1:
        at = length - 1
    elif isinstance(position, str) and position.isdigit():
        at = int(position) - 1
    elif isinstance(position, int) and not isinstance(position, bool):
        at = position - 1
    else:
        raise CoupletInputError(f"the 嵌字 position is a number from 1 to the length, or 'last', not {position!r}")
    if not 0 <= at < length:
        raise CoupletInputError(f"the 嵌字 position {position} is past the end of a {length}-character line")
    if at == length - 1:
        names = {LEVEL: "level (平)", OBLIQUE: "oblique (仄)", None: "of no known tone"}
        if tone_of(heads[0]) != OBLIQUE:
            raise CoupletInputError(f"{heads[0]} is {names[tone_of(heads[0])]}: it cannot end the 上联, which ends on "
                                    "an oblique tone (仄)")
        if tone_of(heads[1]) != LEVEL:
            raise CoupletInputError(f"{heads[1]} is {names[tone_of(heads[1])]}: it cannot end the 下联, which ends on "
                                    "a level tone (平)")
    return at


def _one_per_line(value, count: int, what: str) -> list:
    """An option given once for all lines, or as a list with one value per line -> one value per line."""
    values = list(value) if isinstance(value, (list, tuple)) else [value] * count
    if len(values) != count:
        raise ValueError(f"{len(values)} {what} for {count} 上联")
    return values


def parallelism(upper: str, lower: str) -> float | None:
    """duilian.pos.parallelism, imported on first use (jieba is slow to load)."""
    from .pos import parallelism as score

    return score(upper, lower)


@lru_cache(maxsize=4)
def _same_character_ids(tokenizer: Tokenizer) -> dict[str, tuple[int, ...]]:
    """Each form of the tokens the decoder may write (the simplified ones, see vocab_tables) -> those tokens'
    ids: the tokens that are a given character in one script or the other (云 -> 云; 雲 -> 云; 餘 -> 余 and 馀).
    The forms are script.char_forms', converted in one OpenCC call per script for the whole vocabulary."""
    chars = [(i, tok) for i, tok in enumerate(tokenizer.tokens) if len(tok) == 1 and is_han(tok)]
    same: dict[str, list[int]] = {}
    for (i, tok), simple, trad in zip(chars, each_simplified([t for _, t in chars]),
                                      each_traditional([t for _, t in chars])):
        if simple == tok:  # written by the decoder: its forms are itself and its traditional form
            for form in {tok, trad}:
                same.setdefault(form, []).append(i)
    return {form: tuple(ids) for form, ids in same.items()}


@lru_cache(maxsize=4)
def vocab_tables(tokenizer: Tokenizer) -> decode.Vocab:
    """The emittable tokens and their tones: the punctuation marks, and the single Han characters that are
    their own simplified form. The model writes simplified, as its corpus is; an answer in traditional is
    converted after (script.to_traditional), so a traditional token of a BERT vocabulary (驅 beside 驱) is
    never written, and can never copy the 上联's own character in another script.

    A character's tone class is the one its simplified and traditional forms agree on; where pypinyin reads
    them differently (兴 xīng, 興 xìng) it is TONE_NONE, which no tone rule may rely on: the final-tone
    rule never puts such a character at the end, so the answer keeps its level ending in either script."""
    chars = [(i, tok) for i, tok in enumerate(tokenizer.tokens) if len(tok) == 1 and (is_han(tok) or is_punct(tok))]
    simplified = each_simplified([tok for _, tok in chars])
    traditional = each_traditional([tok for _, tok in chars])
    ids, han, tone = [], [], []
    for (i, tok), simple, trad in zip(chars, simplified, traditional):
        if simple != tok:  # a traditional form: never written
            continue
        ids.append(i)
        han.append(is_han(tok))
        t = tone_of(tok)
        tone.append(_TONE_CODE[t if t == tone_of(trad) else None])
    return decode.Vocab(ids=torch.tensor(ids), han=torch.tensor(han), tone=torch.tensor(tone, dtype=torch.int8),
                        size=len(tokenizer))
