"""Any 上联 of Chinese characters gets a 下联: how many did, and how many the old behaviour refused.

(a) Every CJK Unified Ideograph of the basic block U+4E00–U+9FFF, alone (a 1-character 上联) and inside a
    7-character line (春风X月入千家), decoded greedily (n=1) with the model: how many got a valid candidate,
    how many were refused (CoupletInputError) or crashed and why, how many were read with [UNK], the time.
(b) Real lines: 绝句/律诗 lines of 全唐诗 (traditional script), the same with rare characters (one seen at most
    RARE times in those lines), and the 上联 of the classical couplets of 聲律啓蒙. "Before" is the behaviour up
    to a5dcbe8: clean_upper, then Tokenizer.encode_chars on the line as typed, so a character outside the
    vocabulary refused the line. "After" is Couplets.read + complete_batch giving a valid candidate.

    OMP_NUM_THREADS=1 python benchmarks/bench_any_upper.py                               # (a) only
    OMP_NUM_THREADS=1 python benchmarks/bench_any_upper.py --poetry DIR --no-sweep       # (b) only
    OMP_NUM_THREADS=1 python benchmarks/bench_any_upper.py --poetry DIR --model runs/mini-hf
    OMP_NUM_THREADS=1 python benchmarks/bench_any_upper.py --script simplified           # answers in simplified

DIR holds files of github:chinese-poetry/chinese-poetry (MIT): 全唐诗/poet.tang.*.json and
蒙学/shenglvqimeng.json, e.g. extracted from a clone with
`git archive HEAD 蒙学/shenglvqimeng.json 全唐诗 | tar -x -C DIR`. Nothing is downloaded at run time.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import re
import sys
import time
import unicodedata
from pathlib import Path

import duilian
from duilian.script import SCRIPTS, is_traditional
from duilian.text import CoupletInputError, clean_upper
from duilian.tokenizer import UnknownCharacterError

BASIC_BLOCK = range(0x4E00, 0xA000)
SWEEP_FORMS = ("{}", "春风{}月入千家")
RARE = 5
"""A character seen at most this many times in the 全唐诗 绝句/律诗 lines is rare."""
BATCH = 512
"""上联 per complete_batch call."""


def is_ideograph(ch: str) -> bool:
    """Any CJK ideograph Unicode knows (every extension), not just the ranges text.is_han accepts."""
    return unicodedata.name(ch, "").startswith(("CJK UNIFIED IDEOGRAPH", "CJK COMPATIBILITY IDEOGRAPH"))


# --- before and after -------------------------------------------------------------------------------------
def before(c: duilian.Couplets, upper: str) -> str | None:
    """Why the old behaviour refused `upper` (None: it did not): clean_upper, then every character as typed
    in the vocabulary (api.Couplets.clean up to a5dcbe8)."""
    try:
        c.tokenizer.encode_chars(clean_upper(upper, c.max_chars))
    except CoupletInputError as e:
        return f"input: {reason(str(e))}"
    except UnknownCharacterError:
        return "characters not in the model's vocabulary"
    return None


def reason(message: str) -> str:
    """A refusal or crash message without the characters it names, so that messages group."""
    return re.sub(r"(found|contains control characters): .*", r"\1: …", message)


def after(c: duilian.Couplets, uppers: list[str], script: str = "auto") -> list[dict]:
    """Per 上联: {"outcome": "valid" | "invalid" | "refused: why" | "crash: why", "answer", "unknown"}, from
    Couplets.read and greedy complete_batch calls of up to BATCH lines (a batch that raises is halved until
    the lines that raise are alone)."""
    out: list[dict] = [{} for _ in uppers]
    readable = []
    for i, upper in enumerate(uppers):
        try:
            c.read(upper, script)
            readable.append(i)
        except CoupletInputError as e:
            out[i] = {"outcome": f"refused: {reason(str(e))}"}
        except Exception as e:  # noqa: BLE001 - a crash is what this benchmark counts
            out[i] = {"outcome": f"crash: {type(e).__name__}: {reason(str(e))}"}

    def decode(chunk: list[int]) -> None:
        try:
            results = c.complete_batch([uppers[i] for i in chunk], n=1, temperature=0, script=script)
        except Exception as e:  # noqa: BLE001
            if len(chunk) == 1:
                out[chunk[0]] = {"outcome": f"crash: {type(e).__name__}: {reason(str(e))}"}
            else:
                decode(chunk[:len(chunk) // 2])
                decode(chunk[len(chunk) // 2:])
            return
        for i, cands in zip(chunk, results):
            if not cands:
                out[i] = {"outcome": "invalid: no candidate"}
                continue
            x = cands[0]
            out[i] = {"outcome": "valid" if x.checks.valid and len(x.text) == len(uppers[i]) else "invalid",
                      "answer": x.text, "unknown": x.unknown, "checks": x.checks}

    for start in range(0, len(readable), BATCH):
        decode(readable[start:start + BATCH])
    return out


def summary(c: duilian.Couplets, uppers: list[str], label: str, examples: int, seed: int,
            script: str = "auto") -> None:
    t0 = time.perf_counter()
    old = [before(c, u) for u in uppers]
    new = after(c, uppers, script)
    seconds = time.perf_counter() - t0
    n = len(uppers)
    outcomes = collections.Counter(r["outcome"] for r in new)
    valid = outcomes.pop("valid", 0)
    refused_before = sum(o is not None for o in old)
    unk = sum(bool(r.get("unknown")) for r in new)
    lost = sum(o is None and bool(r.get("unknown")) for o, r in zip(old, new))  # known as typed, not once simplified
    print(f"\n## {label}: {n} 上联, {sum(is_traditional(u) for u in uppers)} of them traditional "
          f"({seconds:.1f} s, {1000 * seconds / max(n, 1):.2f} ms per 上联)")
    print(f"before: refused {refused_before} ({100 * refused_before / n:.2f}%)")
    for why, k in collections.Counter(o for o in old if o).most_common():
        print(f"    {k:6d}  {why}")
    print(f"after:  a valid candidate for {valid} ({100 * valid / n:.2f}%), none for {n - valid} "
          f"({100 * (n - valid) / n:.2f}%); {unk} read with [UNK], {lost} of them known as typed")
    for why, k in outcomes.most_common():
        shown = [f"{u} -> {r['answer']}" if "answer" in r else u
                 for u, r in zip(uppers, new) if r["outcome"] == why][:8]
        print(f"    {k:6d}  {why}   e.g. {', '.join(shown)}")
        for u, r in zip(uppers, new):
            if r["outcome"] == why and "checks" in r:
                print(f"            {u}: {r['checks']}")
                break
    rescued = [(u, r) for u, o, r in zip(uppers, old, new) if o and r["outcome"] == "valid"]
    print(f"refused before, answered now: {len(rescued)}")
    for u, r in sorted(random.Random(seed).sample(rescued, min(examples, len(rescued)))):
        print(f"    {u}  ->  {r['answer']}   [UNK]: {''.join(r['unknown']) or '-'}")


# --- (b) the corpus -----------------------------------------------------------------------------------------
def tang_lines(root: Path) -> list[str]:
    """The lines of the 全唐诗's 绝句 and 律诗: poems of 4 or 8 clauses (split at ，。) of 5 or 7
    characters each, holding only ideographs and ，。."""
    files = sorted((root / "全唐诗").glob("poet.tang.*.json"), key=lambda p: int(p.name.split(".")[2]))
    if not files:
        sys.exit(f"no 全唐诗/poet.tang.*.json under {root}")
    lines = []
    for path in files:
        for poem in json.loads(path.read_text(encoding="utf-8")):
            text = "".join(poem["paragraphs"])
            if not text or not all(is_ideograph(ch) or ch in "，。" for ch in text):
                continue
            clauses = [x for x in re.split("[，。]", text) if x]
            if len(clauses) in (4, 8) and len({len(x) for x in clauses}) == 1 and len(clauses[0]) in (5, 7):
                lines.extend(clauses)
    return lines


def shenglv_uppers(root: Path) -> list[str]:
    """The 上联 of 聲律啓蒙's couplets, in order, each once: "雲對雨" -> 雲; "晚照對晴空" -> 晚照; the
    clause before its equal-length partner ("人間清暑殿，天上廣寒宮" -> 人間清暑殿); and the long couplets
    split at ；("兩鬢風霜，途次早行之客；一蓑煙雨，溪邊晚釣之翁" -> 兩鬢風霜，途次早行之客)."""
    book = json.loads((root / "蒙学" / "shenglvqimeng.json").read_text(encoding="utf-8"))
    uppers = []
    for volume in book["content"]:
        for chapter in volume["content"]:
            for paragraph in chapter["paragraphs"]:
                for sentence in filter(None, paragraph.split("。")):
                    if "；" in sentence:
                        upper, lower = sentence.split("；", 1)
                        if len(upper) == len(lower):
                            uppers.append(upper)
                        continue
                    clauses = sentence.split("，")
                    pending = None
                    for clause in clauses:
                        if "對" in clause:
                            left, right = clause.split("對", 1)
                            if len(left) == len(right):
                                uppers.append(left)
                        elif pending is None:
                            pending = clause
                        else:
                            if len(pending) == len(clause):
                                uppers.append(pending)
                            pending = None
    return list(dict.fromkeys(uppers))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="a model directory (default: the embedded default model)")
    p.add_argument("--poetry", type=Path, default=None, help="a chinese-poetry directory: runs part (b)")
    p.add_argument("--lines", type=int, default=1000, help="poem lines per set (default 1000)")
    p.add_argument("--no-sweep", action="store_true", help="skip part (a)")
    p.add_argument("--script", default="auto", choices=SCRIPTS, help="the answers' script (default auto)")
    p.add_argument("--seed", type=int, default=0, help="seed of the line samples and the examples shown")
    p.add_argument("--examples", type=int, default=5, help="lines refused before and answered now, shown per set")
    args = p.parse_args()

    t0 = time.perf_counter()
    c = duilian.load(args.model)
    print(f"model: {args.model or 'embedded default'} ({len(c.tokenizer)} tokens), loaded in "
          f"{time.perf_counter() - t0:.1f} s; greedy, n=1, script {args.script}")
    if not args.no_sweep:
        chars = [chr(cp) for cp in BASIC_BLOCK]
        for form in SWEEP_FORMS:
            summary(c, [form.format(ch) for ch in chars], f"U+4E00–U+9FFF as {form.format('X')}", args.examples,
                    args.seed, args.script)
    if args.poetry:
        lines = tang_lines(args.poetry)
        counts = collections.Counter(ch for line in lines for ch in line)
        rare = [line for line in lines if any(counts[ch] <= RARE for ch in line)]
        print(f"\n全唐诗: {len(lines)} 绝句/律诗 lines, {len(counts)} characters, {len(rare)} lines with a character "
              f"seen <= {RARE} times")
        sample = random.Random(args.seed).sample(lines, min(args.lines, len(lines)))
        summary(c, sample, "全唐诗 绝句/律诗 lines, a random sample", args.examples, args.seed, args.script)
        rare_sample = random.Random(args.seed).sample(rare, min(args.lines, len(rare)))
        summary(c, rare_sample, f"全唐诗 lines with a rare character (seen <= {RARE} times)", args.examples,
                args.seed, args.script)
        summary(c, shenglv_uppers(args.poetry), "聲律啓蒙 couplets, every 上联", args.examples, args.seed, args.script)


if __name__ == "__main__":
    main()
