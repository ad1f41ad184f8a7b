"""duilian's constrained decoder against transformers `generate`, the way the seed model is used.

Same model (random weights unless --model), same 上联, same process, same threads, both warmed up:

  baseline   model.generate(prompt [CLS]上联-, do_sample=True, max_length=25, num_return_sequences=5) as in
             the seed's pipeline snippet (max_length raised only where a line does not fit in 25 tokens);
             throughput in batches of --batch 上联 (cut from the set sorted by length) with left padding and
             an attention mask.
  duilian    Couplets.complete / complete_batch(n=5, method=sample): masks, KV cache, stop at the 上联's length;
             throughput in the same batches.

Reports per preset: latency for one 上联 with 5 candidates (median over the latency set), throughput over
--count 上联 (candidates per second), the ratios, and the form validity (rules.check_pair) of both outputs.

    python benchmarks/bench_decode.py --presets tiny,mini --count 1000
    python benchmarks/bench_decode.py --presets base --count 100       # base is slow on a CPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from duilian.api import Couplets
from duilian.model import build_model, load_model
from duilian.rules import check_pair
from duilian.text import CoupletInputError
from duilian.tokenizer import default_tokenizer

N = 5  # candidates per 上联, as num_return_sequences=5
SEED_MAX_LENGTH = 25  # the seed's pipeline snippet
DEFAULT_TEST = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "couplet" / "test" / "in.txt"


def read_uppers(path: Path, count: int, c: Couplets) -> list[str]:
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                out.append(c.clean(line))
            except CoupletInputError:
                continue
            if len(out) == count:
                break
    return out


# --- the baseline ---------------------------------------------------------------------------------------------
def baseline_batch(model, uppers: list[str], seed: int) -> list[list[str]]:
    """transformers generate, sampling, for a batch of 上联 (left padded) -> N 下联 texts per 上联."""
    tok = default_tokenizer()
    pad, sep = tok.pad_id, tok.sep_id  # (properties: look them up once, not per token)
    prompts = [tok.encode_prompt(u) for u in uppers]
    T = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (T - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in prompts])
    max_length = max(SEED_MAX_LENGTH, T + max(len(u) for u in uppers) + 1)
    torch.manual_seed(seed)
    out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, max_length=max_length,
                         num_return_sequences=N, pad_token_id=pad)
    texts = []
    for row in out[:, T:].tolist():
        if sep in row:  # the 下联 ends at the first [SEP], as the seed's users cut it
            row = row[:row.index(sep)]
        texts.append("".join(tok.tokens[i] for i in row if i != pad))
    return [texts[i * N:(i + 1) * N] for i in range(len(uppers))]


def validity(uppers: list[str], lowers: list[list[str]]) -> float:
    checks = [check_pair(u, l).valid for u, ls in zip(uppers, lowers) for l in ls]
    return sum(checks) / max(1, len(checks))


# --- one preset -----------------------------------------------------------------------------------------------
def bench(model, name: str, args) -> dict:
    c = Couplets(model)
    uppers = read_uppers(args.test, args.count, c)
    latency_set = uppers[:args.latency_lines]
    with torch.inference_mode():
        # warm-up, both sides
        baseline_batch(model, latency_set[:1], 0)
        c.complete(latency_set[0], n=N, seed=0)

        def timed(fn):
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0

        # 1) latency: one 上联, 5 candidates
        lat_base, lat_ours = [], []
        for i, u in enumerate(latency_set):
            lat_base.append(timed(lambda: baseline_batch(model, [u], i)))
            lat_ours.append(timed(lambda: c.complete(u, n=N, seed=i)))
        # 2) throughput: all 上联 in batches of --batch, the two sides taking turns batch by batch so that a
        #    change in the machine's load (it is shared) falls on both alike. The batches are cut from the
        #    上联 sorted by length, which spares the baseline most of its padding and gives duilian (which
        #    decodes equal lengths together) few groups per batch: the same help for both.
        by_length = sorted(uppers, key=len)
        base_out: list[list[str]] = []
        ours_out: list = []
        t_base = t_ours = 0.0
        for i in range(0, len(by_length), args.batch):
            batch = by_length[i:i + args.batch]
            t_base += timed(lambda: base_out.extend(baseline_batch(model, batch, i)))
            t_ours += timed(lambda: ours_out.extend(c.complete_batch(batch, n=N, seed=i)))
        # 3) duilian given all 上联 in one call, as `duilian generate --input` does (it decodes lines of equal
        #    length together, so one call makes few, full groups where batches of 50 make many small ones)
        t_ours_all = timed(lambda: c.complete_batch(uppers, n=N, seed=0))
    lat_b, lat_o = statistics.median(lat_base), statistics.median(lat_ours)
    result = {
        "preset": name,
        "uppers": len(uppers),
        "latency_lines": len(latency_set),
        "latency_ms": {"baseline": 1000 * lat_b, "duilian": 1000 * lat_o, "ratio": lat_b / lat_o},
        "throughput_candidates_per_s": {
            "baseline": N * len(uppers) / t_base, "duilian": sum(map(len, ours_out)) / t_ours,
            "ratio": (sum(map(len, ours_out)) / t_ours) / (N * len(uppers) / t_base),
        },
        "throughput_uppers_per_s": {"baseline": len(uppers) / t_base, "duilian": len(uppers) / t_ours},
        "throughput_one_call_candidates_per_s": {
            "duilian": sum(map(len, ours_out)) / t_ours_all,
            "ratio": (sum(map(len, ours_out)) / t_ours_all) / (N * len(uppers) / t_base),
        },
        "form_valid": {"baseline": validity(by_length, base_out),
                       "duilian": validity(by_length, [[x.text for x in cs] for cs in ours_out])},
        "candidates_per_upper_duilian": sum(map(len, ours_out)) / len(uppers),
    }
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="tiny,mini,base",
                   help="model presets, random weights (default: tiny,mini,base)")
    p.add_argument("--model", default=None, metavar="DIR", help="benchmark this HF model directory instead of presets")
    p.add_argument("--test", type=Path, default=DEFAULT_TEST, help="上联 file, one per line (default: the test split)")
    p.add_argument("--count", type=int, default=1000, help="上联 for the throughput run (default: 1000)")
    p.add_argument("--latency-lines", type=int, default=10, help="上联 timed one at a time (default: 10)")
    p.add_argument("--batch", type=int, default=50, help="上联 per batch, both sides (default: 50)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads for both (default: 1, the steadiest on a shared machine)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    models = [(args.model, load_model(args.model))] if args.model else \
        [(name, build_model(name, dropout=0.0, seed=0).eval()) for name in args.presets.split(",")]
    results = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {N} candidates per 上联")
    for name, model in models:
        r = bench(model, name, args)
        results.append(r)
        lat, thr, val = r["latency_ms"], r["throughput_candidates_per_s"], r["form_valid"]
        print(f"{name:>5}: latency {lat['baseline']:.1f} ms -> {lat['duilian']:.1f} ms ({lat['ratio']:.1f}x lower); "
              f"throughput {thr['baseline']:.1f} -> {thr['duilian']:.1f} candidates/s ({thr['ratio']:.1f}x) "
              f"over {r['uppers']} 上联 in batches of {args.batch}; form valid {val['baseline']:.1%} -> "
              f"{val['duilian']:.1%}; duilian with all 上联 in one call: "
              f"{r['throughput_one_call_candidates_per_s']['duilian']:.1f} candidates/s "
              f"({r['throughput_one_call_candidates_per_s']['ratio']:.1f}x)", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"threads": torch.get_num_threads(), "results": results}, indent=2,
                                        ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
