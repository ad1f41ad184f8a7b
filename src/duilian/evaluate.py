"""Score a model on a test split: how close its 下联 are to the human ones, and how right their form is.

    read pairs -> decode the 上联 (one batched pass per chunk, timed) -> BLEU against the references
               -> perplexity of the references (teacher-forced) -> form metrics for ours and for the references

Every number comes from a pure function below (`bleu`, `perplexity`, `form_metrics`, `distinct`), so the
report can be recomputed from any list of lines; `evaluate` only glues them to a model.

Definitions (also written into every report, see DEFINITIONS):
- BLEU-n: corpus BLEU over characters, sacrebleu.metrics.BLEU(tokenize="none", max_ngram_order=n) with
  hypotheses and references written as space-separated characters (punctuation included), one reference
  per line; the hypothesis is the decoder's top candidate.
- perplexity: exp(-(sum of log p of every reference 下联 token and its final [SEP]) / (number of those
  tokens)), given [CLS]上联-, with the raw model (no form masks).
- form metrics: duilian.rules.check_pair on each (上联, 下联); booleans are fractions of all pairs,
  `ends_level` is the fraction of pairs whose 上联 ends oblique (仄), `rhythm_opposition` the mean over pairs
  where it is defined; distinct-n = distinct character n-grams across all 下联 / all n-grams (n-grams never
  cross lines).
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from .corpus import read_pairs as read_corpus
from .corpus import resolve_source
from .knobs import check_literals, knob
from .rules import check_pair
from .script import to_simplified
from .text import CoupletInputError, clean_upper, normalize

Method = Literal["beam", "sample", "greedy"]
First = Literal["sample", "greedy", "beam"]  # decode.Search.first
BLEU_ORDERS = (1, 2, 4)
N_EXAMPLES = 10  # (上联, reference, ours) triples kept in report.json and report.md

DEFINITIONS = {
    "bleu": "corpus character BLEU: sacrebleu.metrics.BLEU(tokenize='none', max_ngram_order=n) over "
            "space-separated characters (punctuation included), one reference per 上联; hypothesis = top candidate",
    "perplexity": "exp(-(sum log p of the reference 下联 tokens and the final [SEP]) / (number of those tokens)), "
                  "teacher-forced given [CLS]上联-, raw model without form masks",
    "form": "duilian.rules.check_pair per pair; booleans = fraction of pairs; ends_level = fraction of the pairs "
            "whose 上联 ends oblique; rhythm_opposition = mean over pairs where defined",
    "distinct": "distinct character n-grams across all 下联 / total character n-grams (within lines)",
    "candidates": "per 上联, over its first 5 candidates: distinct-2 among them (how much they vary); the mean",
    "throughput": "上联 decoded per second of wall time spent in Couplets.complete_batch",
    "genericness": "share of the first candidates that are one of the 1% most frequent distinct first candidates "
                   "(all different: ~1%); the same over their last 3 characters; the most repeated endings",
}


@dataclass
class EvalConfig:
    """How to evaluate. The decoding options are passed to Couplets.complete_batch unchanged."""

    limit: int | None = knob("evaluate only the first N pairs of the test split; None: all", None, metavar="N")
    n: int = knob("candidates decoded per 上联, the top one is scored; for beam also the beam width (so 1 is greedy "
                  "with the decoder's rule bonus); greedy always writes one", 1, group="decoding")
    method: Method = knob("decoding method; greedy = the decoder's temperature-0 sampling (the likeliest allowed "
                          "token)", "beam")
    batch_size: int = knob("上联 per decoding pass and pairs per perplexity pass", 32, metavar="B")
    seed: int = knob("seed for --method sample, so that a report can be reproduced", 0)
    temperature: float = knob("sampling temperature for --method sample", 1.0)
    top_p: float = knob("nucleus sampling mass for --method sample; 1 = off", 1.0)
    first: First = knob("--method sample: where the first (scored) candidate comes from (decode.Search.first); "
                        "sample scores sampling, beam scores as a width-5 beam search, like the API's default",
                        "sample")
    allow_upper_chars: bool = knob("let the 下联 reuse 上联 characters at other positions (decoding and form checks)",
                                   False)
    lm_weight: float | None = knob("anti-LM weight β (api.Options.lm_weight): rank by score - β x the 下联's log-prob "
                                   "read with no 上联; 0 = off; None: the model's own (config.json)", None,
                                   metavar="BETA")
    pair_weight: float | None = knob("weight of the model's aligned-pair table (api.Options.pair_weight): rank by "
                                     "score + W x the 下联's pair score; 0 = off; None: the model's own", None,
                                     metavar="W")
    calibration_weight: float | None = knob("weight of the model's calibration (api.Options.calibration_weight): "
                                            "each character it over-writes costs W x its penalty; 0 = off; None: "
                                            "the model's own", None, metavar="W")
    reverse_weight: float | None = knob("noisy-channel weight λ (api.Options.reverse_weight): rank by score + λ x "
                                        "log P(上联 | 下联), for a model trained with --directions both; 0 = off; "
                                        "None: the model's own", None, metavar="LAMBDA")
    device: str = knob("torch device for the model", "cpu")
    quantize: str | None = knob("weights the decoder runs with: None (the model's own) or \"int8\" (CPU only; see "
                                "duilian.load)", None)

    def __post_init__(self):
        check_literals(self)
        if self.n < 1:
            raise ValueError(f"n must be at least 1, not {self.n}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be at least 1 (or None for all), not {self.limit}")


# --- reading a test split ------------------------------------------------------------------------

def read_pairs(test_dir: str | Path, limit: int | None = None) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """The (上联, 下联) pairs of a test split, normalised: any corpus `duilian prepare` reads (the public
    in.txt / out.txt layout, plain, .xz or .gz; TSV; UER lines), through corpus.py's reader. Pairs with an
    empty side or a malformed line are skipped and counted in the second result."""
    pairs, skipped = [], Counter()
    for u, l in read_corpus(resolve_source([str(test_dir)])):
        if u is None:
            skipped["malformed line"] += 1
            continue
        u, l = normalize(u), normalize(l)
        if not u or not l:
            skipped["empty line"] += 1
            continue
        pairs.append((u, l))
        if limit is not None and len(pairs) >= limit:
            break
    return pairs, dict(skipped)


# --- metrics (pure functions) --------------------------------------------------------------------

def _spaced(line: str) -> str:
    return " ".join(line)


def bleu(hyps: list[str], refs: list[str], n: int = 4) -> float:
    """Corpus character BLEU-n in [0, 100] (see the module docstring); one reference per hypothesis."""
    from sacrebleu.metrics import BLEU

    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references")
    if not hyps:
        raise ValueError("BLEU of no lines")
    metric = BLEU(tokenize="none", max_ngram_order=n)
    return float(metric.corpus_score([_spaced(h) for h in hyps], [[_spaced(r) for r in refs]]).score)


def perplexity(logprob_sums: list[float], token_counts: list[int]) -> float:
    """exp(-total log-prob / total tokens) over a corpus of scored lines."""
    total = sum(token_counts)
    if total <= 0:
        raise ValueError("perplexity of no tokens")
    return math.exp(-sum(logprob_sums) / total)


def distinct(lines: list[str], n: int) -> float:
    """Distinct character n-grams across all lines / total n-grams (an n-gram never crosses lines); 0 if none."""
    grams = [line[i:i + n] for line in lines for i in range(len(line) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


GENERIC_TOP = 0.01
"""Genericness counts the first candidates that are among this share of the most frequent distinct ones."""
COMMON_TAILS = 10
"""How many of the most repeated line endings (last 3 characters) a report lists, to read."""


def genericness(lines: list[str]) -> dict:
    """How often one line answers many 上联. `top_share`: the share of `lines` that are one of the most frequent
    GENERIC_TOP of the distinct lines (ceil, at least one), so a set of lines that are all different scores about
    GENERIC_TOP and one line repeated everywhere scores 1. `tail_share`: the same for the last three characters
    (万象新, 步步高, 处处春 end many different lines). `common_tails`: the most repeated endings and their counts."""
    lines = [line for line in lines if line]
    if not lines:
        raise ValueError("genericness of no lines")

    def top(items: list[str]) -> tuple[float, list]:
        counts = Counter(items).most_common()
        k = max(1, math.ceil(GENERIC_TOP * len(counts)))
        return sum(n for _, n in counts[:k]) / len(items), counts

    top_share, _ = top(lines)
    tail_share, tails = top([line[-3:] for line in lines])
    return {"top_share": top_share, "tail_share": tail_share, "distinct_lines": len(set(lines)) / len(lines),
            "common_tails": [[t, n] for t, n in tails[:COMMON_TAILS]]}


FORM_KEYS = ("same_length", "punctuation_aligned", "repeats_mirrored", "no_copy")


def form_metrics(pairs: list[tuple[str, str]], allow_upper_chars: bool = False) -> dict:
    """Form of a set of (上联, 下联) pairs, every check from duilian.rules.check_pair.

    Returns fractions in [0, 1]: one per hard rule, `ends_level` (over the pairs where it applies, None if
    none do), `rhythm_opposition` (mean where defined, None if never), `valid` (all hard rules hold),
    `distinct_1` / `distinct_2` of the 下联, and the counts behind them.
    """
    if not pairs:
        raise ValueError("form metrics of no pairs")
    checks = [check_pair(u, l, allow_upper_chars=allow_upper_chars) for u, l in pairs]
    out: dict = {key: sum(getattr(c, key) for c in checks) / len(checks) for key in FORM_KEYS}
    applicable = [c.ends_level for c in checks if c.ends_level is not None]
    out["ends_level"] = sum(applicable) / len(applicable) if applicable else None
    rhythm = [c.rhythm_opposition for c in checks if c.rhythm_opposition is not None]
    out["rhythm_opposition"] = sum(rhythm) / len(rhythm) if rhythm else None
    out["valid"] = sum(c.valid for c in checks) / len(checks)
    lowers = [l for _, l in pairs]
    out["distinct_1"] = distinct(lowers, 1)
    out["distinct_2"] = distinct(lowers, 2)
    out["pairs"] = len(checks)
    out["ends_level_applicable"] = len(applicable)
    out["rhythm_defined"] = len(rhythm)
    return out


# --- the evaluation ------------------------------------------------------------------------------
VARIETY_OVER = 5
"""How many of a 上联's candidates its variety (distinct-2 among them) is measured over: the 5 a user sees."""

def _decode_options(config: EvalConfig) -> dict:
    common = {"allow_upper_chars": config.allow_upper_chars, "lm_weight": config.lm_weight,
              "reverse_weight": config.reverse_weight, "calibration_weight": config.calibration_weight,
              "pair_weight": config.pair_weight}
    if config.method == "beam":
        return {"method": "beam", **common}
    if config.method == "greedy":
        # Temperature 0 is the decoder's greedy mode: the most likely allowed token at every step.
        return {"method": "sample", "temperature": 0.0, **common}
    return {"method": "sample", "seed": config.seed, "temperature": config.temperature, "top_p": config.top_p,
            "first": config.first, **common}


def _usable(pairs, couplets) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """Drop the pairs the model cannot take, counted by reason: a 上联 longer than the model fits or that
    clean_upper rejects. Characters outside the vocabulary are no reason: the model reads them as [UNK]
    (and `unknown_characters` in the report counts them)."""
    kept, skipped = [], Counter()
    for u, l in pairs:
        if len(u) > couplets.max_chars:
            reason = f"上联 longer than {couplets.max_chars} characters"
        else:
            try:
                clean_upper(u, couplets.max_chars)
                reason = None
            except CoupletInputError:
                reason = "上联 rejected by clean_upper"
        if reason:
            skipped[reason] += 1
        else:
            kept.append((u, l))
    return kept, dict(skipped)


def evaluate(model_dir: str | Path | None, test_dir: str | Path, config: EvalConfig | None = None,
             progress: bool = False) -> dict:
    """Decode every 上联 of `test_dir` with the model in `model_dir` (None: the embedded default) and
    return the report (JSON-ready; see `render_markdown`)."""
    from .api import load

    config = config or EvalConfig()
    pairs, skipped = read_pairs(test_dir, config.limit)  # before loading the model: a wrong path fails fast
    couplets = load(model_dir, device=config.device, quantize=config.quantize)
    pairs, unusable = _usable(pairs, couplets)
    for reason, count in unusable.items():
        skipped[reason] = skipped.get(reason, 0) + count
    if not pairs:
        raise ValueError(f"{test_dir}: no usable pairs (skipped: {skipped})")
    uppers, refs = [u for u, _ in pairs], [l for _, l in pairs]
    chunks = [range(i, min(i + config.batch_size, len(pairs))) for i in range(0, len(pairs), config.batch_size)]
    bar = _progress(len(pairs), progress)

    # 1) Decode, timing only the decoder (not reading, not scoring).
    options = _decode_options(config)
    hyps: list[str] = []
    variety: list[float] = []  # per 上联: distinct-2 among its candidates
    counts: list[int] = []
    decode_seconds = 0.0
    for chunk in chunks:
        start = time.perf_counter()
        candidates = couplets.complete_batch([uppers[i] for i in chunk], n=config.n, **options)
        decode_seconds += time.perf_counter() - start
        # A 上联 with no candidate (the masks left no way through) scores as an empty, invalid line.
        hyps.extend(cands[0].text if cands else "" for cands in candidates)
        variety.extend(distinct([c.text for c in cands[:VARIETY_OVER]], 2) for cands in candidates if cands)
        counts.extend(len(cands) for cands in candidates)
        bar.update(len(chunk))
    bar.close()
    no_candidate = sum(not h for h in hyps)

    # 2) Perplexity of the references: one score per pair = sum of log p over 下联 + [SEP].
    #    A reference character outside the vocabulary is not scored (the model never writes [UNK]).
    logprobs: list[float] = []
    for chunk in chunks:
        logprobs.extend(couplets.score([uppers[i] for i in chunk], [refs[i] for i in chunk]))
    token_counts = [couplets.known_tokens(l) for l in refs]
    unknown = [couplets.tokenizer.unknown(to_simplified(u + l)) for u, l in pairs]  # read or scored as [UNK]

    # 3) Metrics.
    ours = list(zip(uppers, hyps))
    report = {
        "model": str(model_dir) if model_dir is not None else "default",
        "test": str(test_dir),
        "config": asdict(config),
        "pairs": len(pairs),
        "skipped": skipped,
        "no_candidate": no_candidate,
        "bleu": {str(n): bleu(hyps, refs, n) for n in BLEU_ORDERS},
        "perplexity": perplexity(logprobs, token_counts),
        "perplexity_tokens": sum(token_counts),
        "unknown_characters": {"pairs": sum(1 for chars in unknown if chars),
                               "distinct": len({ch for chars in unknown for ch in chars})},
        "candidates": {"per_upper": sum(counts) / len(counts),
                       "distinct_2": sum(variety) / len(variety) if variety else 0.0},
        "form": {
            "duilian": form_metrics(ours, config.allow_upper_chars),
            "reference": form_metrics(pairs, config.allow_upper_chars),
        },
        "genericness": {"duilian": genericness(hyps), "reference": genericness(refs)},
        "throughput": {
            "uppers_per_s": len(pairs) / decode_seconds if decode_seconds > 0 else None,
            "decode_seconds": decode_seconds,
            "device": config.device,
        },
        "examples": [{"upper": u, "reference": r, "duilian": h}
                     for u, r, h in list(zip(uppers, refs, hyps))[:N_EXAMPLES]],
        "definitions": DEFINITIONS,
        "versions": _versions(),
    }
    report["hypotheses"] = hyps
    return report


def _progress(total: int, enabled: bool):
    if enabled:
        from tqdm import tqdm

        return tqdm(total=total, unit="上联", desc="decoding")

    class _Silent:
        def update(self, n): ...
        def close(self): ...

    return _Silent()


def _versions() -> dict[str, str]:
    import sacrebleu
    import torch
    import transformers

    from . import __version__

    return {"duilian": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "sacrebleu": sacrebleu.__version__, "python": platform.python_version()}


# --- writing the report --------------------------------------------------------------------------

ROWS = [  # (label, key in form metrics, format)
    ("same length", "same_length", "pct"),
    ("punctuation aligned", "punctuation_aligned", "pct"),
    ("repeat pattern mirrored", "repeats_mirrored", "pct"),
    ("no copied character", "no_copy", "pct"),
    ("ends level when 上联 ends oblique", "ends_level", "pct"),
    ("rhythm-point tone opposition (mean)", "rhythm_opposition", "pct"),
    ("fully valid form", "valid", "pct"),
    ("distinct-1", "distinct_1", "ratio"),
    ("distinct-2", "distinct_2", "ratio"),
]


def _fmt(value, kind: str) -> str:
    if value is None:
        return "n/a"
    if kind == "pct":
        return f"{100 * value:.1f}%"
    if kind == "ratio":
        return f"{value:.3f}"
    return f"{value:.2f}"


def render_markdown(report: dict) -> str:
    """The report as Markdown: a `metric | duilian | reference` table, then definitions and examples."""
    cfg, form = report["config"], report["form"]
    lines = [
        f"# duilian evaluation: {report['model']}",
        "",
        f"Test split `{report['test']}`: {report['pairs']} pairs"
        + (f" ({sum(report['skipped'].values())} skipped: "
           + ", ".join(f"{k} × {v}" for k, v in report["skipped"].items()) + ")" if report["skipped"] else "")
        + f"; decoding `{cfg['method']}`, n={cfg['n']}"
        + (f", temperature {cfg['temperature']:g}, top-p {cfg['top_p']:g}, first candidate from "
           f"{cfg.get('first', 'sample')}" if cfg["method"] == "sample" else "")
        + f", batch {cfg['batch_size']}, device {cfg['device']}."
        + (f" {report['unknown_characters']['pairs']} pairs hold characters outside the model's vocabulary: read "
           "as [UNK] in the 上联, not scored in the reference." if report.get("unknown_characters", {}).get("pairs")
           else ""),
        "",
        "| metric | duilian | reference |",
        "|---|---|---|",
    ]
    for n, score in report["bleu"].items():
        lines.append(f"| BLEU-{n} (characters) | {score:.2f} | — |")
    lines.append(f"| perplexity of the reference 下联 | {report['perplexity']:.2f} | — |")
    for label, key, kind in ROWS:
        lines.append(f"| {label} | {_fmt(form['duilian'][key], kind)} | {_fmt(form['reference'][key], kind)} |")
    cands = report["candidates"]
    lines.append(f"| candidates per 上联 | {cands['per_upper']:.2f} | — |")
    lines.append(f"| distinct-2 among a 上联's candidates (mean) | {_fmt(cands['distinct_2'], 'ratio')} | — |")
    if "genericness" in report:
        ours, theirs = report["genericness"]["duilian"], report["genericness"]["reference"]
        lines.append(f"| first candidates among the 1% most frequent | {_fmt(ours['top_share'], 'pct')} | "
                     f"{_fmt(theirs['top_share'], 'pct')} |")
        lines.append(f"| endings (last 3) among the 1% most frequent | {_fmt(ours['tail_share'], 'pct')} | "
                     f"{_fmt(theirs['tail_share'], 'pct')} |")
    speed = report["throughput"]["uppers_per_s"]
    lines.append(f"| decoding throughput (上联/s) | {_fmt(speed, 'num')} | — |")
    if report.get("no_candidate"):
        lines.append(f"| 上联 with no candidate | {report['no_candidate']} | — |")
    lines += ["", "Definitions:", ""]
    lines += [f"- {name}: {text}" for name, text in report["definitions"].items()]
    if "genericness" in report:
        tails = report["genericness"]["duilian"]["common_tails"]
        lines += ["", "Most repeated endings of the first candidates: " + ", ".join(f"{t} × {n}" for t, n in tails)]
    lines += ["", "| 上联 | reference | duilian |", "|---|---|---|"]
    lines += [f"| {e['upper']} | {e['reference']} | {e['duilian']} |" for e in report["examples"]]
    return "\n".join(lines) + "\n"


def write_report(report: dict, out_dir: str | Path) -> Path:
    """report.json (everything but the hypotheses), report.md, and hypotheses.txt (one 下联 per pair)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {k: v for k, v in report.items() if k != "hypotheses"}
    (out_dir / "report.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    (out_dir / "report.md").write_text(render_markdown(report), encoding="utf-8")
    if "hypotheses" in report:
        (out_dir / "hypotheses.txt").write_text("".join(h + "\n" for h in report["hypotheses"]), encoding="utf-8")
    return out_dir


def default_out_dir(model_dir: str | Path | None) -> Path:
    """./eval-<model folder name>/ (./eval-default/ for the embedded model)."""
    name = Path(model_dir).resolve().name if model_dir is not None else "default"
    return Path(f"eval-{name}")
