"""A blind pairwise judge of 下联: which of two lines answers a 上联 better, as a reader would say.

BLEU against one reference rewards the expected answer, not a good one; this asks a reader. Three steps:

    # 1) lines: the first candidate of one or more models for a sample of 上联, beside the human 下联
    python benchmarks/judge.py lines --test ../shared/data/couplet/test --n 100 --seed 1 \
        --model new=runs/new-hf --model old=src/duilian/models/default --out runs/judge/modern.tsv

    # 2) make: two systems of that file, each item in a seeded random order, for a judge who sees nothing else
    python benchmarks/judge.py make runs/judge/modern.tsv --a new --b human --out runs/judge/modern-new-human
    #    -> items.md (benchmarks/judge_instructions.md + the numbered items) and key.json (never shown)
    #    A judge (a person, or a helper agent given only items.md) writes answers.jsonl, one JSON per item.

    # 3) score: the table, from answers.jsonl and key.json
    python benchmarks/judge.py score runs/judge/modern-new-human

    # One judge for several systems against the same one: --a more than once. Every (system, human) item goes into
    # one file in a seeded order, so each system's share comes from the same judge. Separate judges differ by
    # several points on the very same pairs; one judge does not.
    python benchmarks/judge.py make runs/judge/modern.tsv --a new --a old --b human --out runs/judge/modern-both

The judge's instructions are benchmarks/judge_instructions.md, fixed: every figure in the model card was made
with that text. "As good or better" for system A counts the items where the judge preferred A or called
them equal (better = 0).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

INSTRUCTIONS = Path(__file__).with_name("judge_instructions.md")
COMPOSE_INSTRUCTIONS = Path(__file__).with_name("judge_compose_instructions.md")


def cmd_lines(args) -> None:
    """Sample `n` pairs of a test split (seeded) and write 上联, human and each model's first candidate."""
    from duilian import load
    from duilian.evaluate import read_pairs

    pairs, _ = read_pairs(args.test)
    rng = random.Random(args.seed)
    sample = sorted(rng.sample(range(len(pairs)), min(args.n, len(pairs))))
    uppers = [pairs[i][0] for i in sample]
    columns = {"upper": uppers, "human": [pairs[i][1] for i in sample]}
    for spec in args.model:
        name, _, path = spec.partition("=")
        c = load(path or None)
        got = []
        for start in range(0, len(uppers), 32):
            chunk = uppers[start:start + 32]
            got += [cands[0].text if cands else "" for cands in c.complete_batch(chunk, n=5, seed=args.seed)]
        columns[name] = got
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    names = list(columns)
    rows = ["\t".join(names)] + ["\t".join(columns[k][i] for k in names) for i in range(len(uppers))]
    out.write_text("\n".join(rows) + "\n", encoding="utf-8")
    print(f"wrote {out}: {len(uppers)} 上联, columns {', '.join(names)}")


def _read_tsv(path: str) -> tuple[list[str], list[list[str]]]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    return header, [line.split("\t") for line in lines[1:] if line.strip()]


def cmd_make(args) -> None:
    """items.md for the judge (the instructions, then each 上联 with the two 下联 in a seeded random order) and
    key.json (which system is 1 and which is 2, per item). Items where the two lines are equal are left out
    (counted in key.json): there is nothing to judge. With several --a, every system's items against --b go into
    the one file, in a seeded order, each item's key naming its system."""
    header, rows = _read_tsv(args.lines)
    systems = args.a
    b, up = header.index(args.b), header.index("upper")
    rng = random.Random(args.seed)
    items, key, same = [], [], {name: 0 for name in systems}
    for name in systems:
        a = header.index(name)
        for row in rows:
            if row[a] == row[b]:
                same[name] += 1
                continue
            first_is_a = rng.random() < 0.5
            one, two = (row[a], row[b]) if first_is_a else (row[b], row[a])
            items.append((row[up], one, two))
            key.append({"upper": row[up], "1": name if first_is_a else args.b, "2": args.b if first_is_a else name,
                        name: row[a], args.b: row[b], **({"a": name} if len(systems) > 1 else {})})
    if len(systems) > 1:  # interleaved, so a 上联's items for two systems are seldom side by side
        order = list(range(len(items)))
        rng.shuffle(order)
        items, key = [items[i] for i in order], [key[i] for i in order]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    instructions = Path(args.instructions) if args.instructions else COMPOSE_INSTRUCTIONS if args.compose \
        else INSTRUCTIONS
    prompt, line = ("主题", "对联") if args.compose else ("上联", "下联")
    text = [instructions.read_text(encoding="utf-8").split("---", 1)[1].strip(), "", "## Items", ""]
    for i, (u, one, two) in enumerate(items, start=1):
        text += [f"{i}. {prompt}：{u}", f"   {line} 1：{one}", f"   {line} 2：{two}", ""]
    (out / "items.md").write_text("\n".join(text), encoding="utf-8")
    head = {"a": systems[0], "b": args.b, "identical": same[systems[0]]} if len(systems) == 1 else \
        {"a": systems, "b": args.b, "identical": same}
    (out / "key.json").write_text(json.dumps({**head, "items": key}, ensure_ascii=False, indent=1), encoding="utf-8")
    print(f"wrote {out}/items.md ({len(items)} items; {sum(same.values())} identical pairs left out) and key.json")


def read_answers(path: Path, n_items: int) -> dict[int, dict]:
    """The judge's JSON lines by item id; anything else in the file (code fences, blank lines) is ignored."""
    answers = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        a = json.loads(line)
        if not 1 <= int(a["id"]) <= n_items or a["better"] not in (0, 1, 2) \
                or not all(1 <= int(a[k]) <= 5 for k in ("score_1", "score_2")):
            raise ValueError(f"{path}: a malformed answer: {line}")
        answers[int(a["id"])] = a
    return answers


def tally(key: dict, answers: dict[int, dict], system: str | None = None) -> dict:
    """Per system: share preferred, share as good or better (preferred or equal), mean score; over the answered
    items, plus the identical pairs (which count as equal for both). A key of several systems (make with several
    --a) is tallied for one of them, `system`."""
    a, b = system or key["a"], key["b"]
    wins = {a: 0, b: 0}
    same = key["identical"][a] if isinstance(key["identical"], dict) else key["identical"]
    ties = same
    scores = {a: [], b: []}
    answered = 0
    for i, item in enumerate(key["items"], start=1):
        ans = answers.get(i)
        if ans is None or item.get("a", a) != a:
            continue
        answered += 1
        for slot in ("1", "2"):
            scores[item[slot]].append(int(ans["score_" + slot]))
        if ans["better"] == 0:
            ties += 1
        else:
            wins[item[str(ans["better"])]] += 1
    n = wins[a] + wins[b] + ties
    return {"items": n, "answered": answered, "identical": same,
            **{name: {"preferred": wins[name] / n, "as_good_or_better": (wins[name] + ties) / n,
                      "mean_score": sum(scores[name]) / max(len(scores[name]), 1)} for name in (a, b)}}


def cmd_score(args) -> None:
    d = Path(args.dir)
    key = json.loads((d / "key.json").read_text(encoding="utf-8"))
    answers = read_answers(d / args.answers, len(key["items"]))
    systems, b = (key["a"] if isinstance(key["a"], list) else [key["a"]]), key["b"]
    tables = {name: tally(key, answers, name) for name in systems}
    (d / "score.json").write_text(json.dumps(tables if len(systems) > 1 else tables[systems[0]], indent=1),
                                  encoding="utf-8")
    print(f"{len(answers)} of {len(key['items'])} items answered; identical pairs count as equal")
    print(f"| system | as good or better than {b} | preferred | mean score | mean score, {b} |")
    print("|---|---|---|---|---|")
    for name, t in tables.items():
        print(f"| {name} | {t[name]['as_good_or_better']:.0%} | {t[name]['preferred']:.0%} | "
              f"{t[name]['mean_score']:.2f} | {t[b]['mean_score']:.2f} |")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("lines", help="first candidates of models beside the human 下联")
    p.add_argument("--test", required=True, help="a test split in any layout duilian reads")
    p.add_argument("--model", action="append", default=[], metavar="NAME=DIR", help="a model (DIR empty: default)")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", required=True)
    p.set_defaults(run=cmd_lines)
    p = sub.add_parser("make", help="a blind item file for two systems of a lines file")
    p.add_argument("lines")
    p.add_argument("--a", required=True, action="append",
                   help="the system whose share is reported (a column name); again for more systems, one judge")
    p.add_argument("--b", required=True, help="the system it is compared with, e.g. human")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--compose", action="store_true",
                   help="items are theme words and two whole couplets (benchmarks/bench_compose.py's lines.tsv), "
                        "judged by judge_compose_instructions.md")
    p.add_argument("--instructions", default=None, help="another fixed instructions file (default: by the kind)")
    p.set_defaults(run=cmd_make)
    p = sub.add_parser("score", help="the table from the judge's answers")
    p.add_argument("dir")
    p.add_argument("--answers", default="answers.jsonl")
    p.set_defaults(run=cmd_score)
    args = ap.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    sys.exit(main())
