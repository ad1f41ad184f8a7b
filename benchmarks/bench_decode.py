"""duilian's constrained decoder against transformers `generate`, the way the seed model is used.

Same model (random weights unless --model), same 上联, same process, same threads, both warmed up:

  baseline   model.generate(prompt [CLS]上联-, do_sample=True, max_length=25, num_return_sequences=5) as in
             the seed's pipeline snippet (max_length raised only where a line does not fit in 25 tokens);
             throughput in batches of --batch 上联 (cut from the set sorted by length) with left padding and
             an attention mask.
  duilian    Couplets.complete / complete_batch(n=5, method=sample, first=sample: all five sampled, as
             generate does; the API's default leads with a beam search); masks, KV cache, stop at the
             上联's length; throughput in the same batches.
  duilian_int8  the same with int8 weights (duilian.load(..., quantize="int8")), unless --no-int8.

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

from duilian.api import Couplets, Options
from duilian.model import build_model, load_model, to_transformers
from duilian.rules import check_pair
from duilian.text import CoupletInputError
from duilian.tokenizer import Tokenizer, default_tokenizer

N = 5  # candidates per 上联, as num_return_sequences=5
SEED_MAX_LENGTH = 25  # the seed's pipeline snippet
DEFAULT_TEST = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "couplet" / "test" / "in.txt"


def read_uppers(path: Path, count: int, c: Couplets) -> list[str]:
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                line = c.clean(line)
            except CoupletInputError:
                continue
            if not c.tokenizer.unknown(line):  # the baseline cannot encode characters outside the vocabulary
                out.append(line)
            if len(out) == count:
                break
    return out


# --- the baseline ---------------------------------------------------------------------------------------------
def baseline_batch(model, uppers: list[str], seed: int, tok=None) -> list[list[str]]:
    """transformers generate, sampling, for a batch of 上联 (left padded) -> N 下联 texts per 上联."""
    tok = tok or default_tokenizer()
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


def cpu_info() -> dict:
    """What the int8 figures depend on: torch's CPU capability, the activation range decode chose, and
    fbgemm's instruction cap if one is set (FBGEMM_ENABLE_INSTRUCTIONS=AVX2 runs the non-VNNI kernels)."""
    import os

    from duilian.gpt import int8_full_range

    return {"capability": torch.backends.cpu.get_cpu_capability(), "int8_full_range": int8_full_range(),
            "fbgemm_override": os.environ.get("FBGEMM_ENABLE_INSTRUCTIONS", "")}


def validity(uppers: list[str], lowers: list[list[str]]) -> float:
    checks = [check_pair(u, l).valid for u, ls in zip(uppers, lowers) for l in ls]
    return sum(checks) / max(1, len(checks))


def int8_agreement(fp32: Couplets, int8: Couplets, uppers: list[str]) -> dict:
    """How far int8 weights move the decoder's next-token distribution (over the emittable tokens, no rule
    masks): both nets read the same prompt [CLS]上联- and then the same 下联 (fp32 greedy), position by
    position. Returns max/mean |log p32 - log p8| over tokens and positions, the mean over positions of the
    largest difference, and how often the most likely token is the same."""
    diffs, top1 = [], []
    with torch.inference_mode():
        for u in uppers:
            spec = fp32.lower_spec(u, Options())
            prompt = torch.tensor([spec.prompt])
            (s32, l32), (s8, l8) = fp32.net.start(prompt, spec.length), int8.net.start(prompt, spec.length)
            for t in range(spec.length):
                p32, p8 = torch.log_softmax(l32.float(), 1), torch.log_softmax(l8.float(), 1)  # (1, V')
                diffs.append((p32 - p8).abs()[0])
                top1.append(bool(p32.argmax() == p8.argmax()))
                if t + 1 < spec.length:
                    token = fp32.vocab.ids[p32.argmax(1)]
                    l32, l8 = s32.step(token), s8.step(token)
    d = torch.stack(diffs)  # (positions, V')
    return {"positions": len(top1), "max_abs_logprob_diff": d.max().item(), "mean_abs_logprob_diff": d.mean().item(),
            "mean_max_abs_logprob_diff": d.max(1).values.mean().item(), "top1_agreement": sum(top1) / len(top1)}


# --- one preset -----------------------------------------------------------------------------------------------
def bench(model, name: str, args, tokenizer=None) -> dict:
    # duilian with the model's own fp32 weights, and (unless --no-int8 or no int8 kernel) with int8 weights.
    sides = {"duilian": Couplets(model, tokenizer)}
    if args.int8:
        sides["duilian_int8"] = Couplets(model, tokenizer, quantize="int8")
    c = sides["duilian"]
    uppers = read_uppers(args.test, args.count, c)
    latency_set = uppers[:args.latency_lines]
    with torch.inference_mode():
        # warm-up, all sides
        baseline_batch(model, latency_set[:1], 0, c.tokenizer)
        for s in sides.values():
            s.complete(latency_set[0], n=N, seed=0, first="sample")

        def timed(fn):
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0

        # 1) latency: one 上联, 5 candidates
        lat = {"baseline": [], **{k: [] for k in sides}}
        for i, u in enumerate(latency_set):
            lat["baseline"].append(timed(lambda: baseline_batch(model, [u], i, c.tokenizer)))
            for k, s in sides.items():
                lat[k].append(timed(lambda: s.complete(u, n=N, seed=i, first="sample")))
        # 2) throughput: all 上联 in batches of --batch, the sides taking turns batch by batch so that a
        #    change in the machine's load (it is shared) falls on all alike. The batches are cut from the
        #    上联 sorted by length, which spares the baseline most of its padding and gives duilian (which
        #    decodes equal lengths together) few groups per batch: the same help for both.
        by_length = sorted(uppers, key=len)
        outs: dict[str, list] = {"baseline": [], **{k: [] for k in sides}}
        t = dict.fromkeys(outs, 0.0)
        for i in range(0, len(by_length), args.batch):
            batch = by_length[i:i + args.batch]
            t["baseline"] += timed(lambda: outs["baseline"].extend(baseline_batch(model, batch, i, c.tokenizer)))
            for k, s in sides.items():
                t[k] += timed(lambda: outs[k].extend(s.complete_batch(batch, n=N, seed=i, first="sample")))
        # 3) duilian given all 上联 in one call, as `duilian generate --input` does (it decodes lines of equal
        #    length together, so one call makes few, full groups where batches of 50 make many small ones)
        t_all = {k: timed(lambda: s.complete_batch(uppers, n=N, seed=0, first="sample")) for k, s in sides.items()}
    lat_b = statistics.median(lat["baseline"])
    thr_b = N * len(uppers) / t["baseline"]
    result = {
        "preset": name,
        "uppers": len(uppers),
        "latency_lines": len(latency_set),
        "latency_ms": {"baseline": 1000 * lat_b},
        "throughput_candidates_per_s": {"baseline": thr_b},
        "throughput_uppers_per_s": {"baseline": len(uppers) / t["baseline"]},
        "throughput_one_call_candidates_per_s": {},
        "form_valid": {"baseline": validity(by_length, outs["baseline"])},
    }
    for k in sides:
        lat_k = statistics.median(lat[k])
        thr_k = sum(map(len, outs[k])) / t[k]
        thr_all = sum(map(len, outs[k])) / t_all[k]
        result["latency_ms"].update({k: 1000 * lat_k, f"{k}_ratio": lat_b / lat_k})
        result["throughput_candidates_per_s"].update({k: thr_k, f"{k}_ratio": thr_k / thr_b})
        result["throughput_uppers_per_s"][k] = len(uppers) / t[k]
        result["throughput_one_call_candidates_per_s"].update({k: thr_all, f"{k}_ratio": thr_all / thr_b})
        result["form_valid"][k] = validity(by_length, [[x.text for x in cs] for cs in outs[k]])
        result[f"candidates_per_upper_{k}"] = sum(map(len, outs[k])) / len(uppers)
    if "duilian_int8" in sides:
        result["int8_agreement"] = int8_agreement(c, sides["duilian_int8"], latency_set)
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
    p.add_argument("--no-int8", dest="int8", action="store_false",
                   help="skip duilian with int8 weights (default: time it too, where torch has the kernel)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.int8:
        from duilian.gpt import check_int8_engine

        try:
            check_int8_engine()
        except ValueError as e:
            print(f"skipping int8: {e}")
            args.int8 = False
    models = [(args.model, load_model(args.model))] if args.model else \
        [(name, to_transformers(build_model(name, dropout=0.0, seed=0)).eval()) for name in args.presets.split(",")]
    tokenizer = Tokenizer.from_dir(args.model) if args.model else None
    results = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {N} candidates per 上联")
    print(f"CPU capability {cpu_info()['capability']}; int8 activations "
          f"{'8-bit (VNNI)' if cpu_info()['int8_full_range'] else '7-bit (no VNNI: reduce_range)'}"
          + (f"; FBGEMM_ENABLE_INSTRUCTIONS={cpu_info()['fbgemm_override']}" if cpu_info()["fbgemm_override"] else ""))
    for name, model in models:
        r = bench(model, name, args, tokenizer)
        results.append(r)
        lat, thr, val = r["latency_ms"], r["throughput_candidates_per_s"], r["form_valid"]
        one = r["throughput_one_call_candidates_per_s"]
        print(f"{name:>5}: baseline latency {lat['baseline']:.1f} ms, throughput {thr['baseline']:.1f} candidates/s "
              f"over {r['uppers']} 上联 in batches of {args.batch}, form valid {val['baseline']:.1%}", flush=True)
        for k in (k for k in val if k != "baseline"):
            print(f"{'':>5}  {k:12s}: latency {lat[k]:.1f} ms ({lat[k + '_ratio']:.1f}x lower); throughput "
                  f"{thr[k]:.1f} candidates/s ({thr[k + '_ratio']:.1f}x); form valid {val[k]:.1%}; all 上联 in "
                  f"one call: {one[k]:.1f} candidates/s ({one[k + '_ratio']:.1f}x)", flush=True)
        if "int8_agreement" in r:
            a = r["int8_agreement"]
            print(f"{'':>5}  int8 vs fp32 log-probs over {a['positions']} positions: max |diff| "
                  f"{a['max_abs_logprob_diff']:.4f}, mean {a['mean_abs_logprob_diff']:.4f}, mean of per-position max "
                  f"{a['mean_max_abs_logprob_diff']:.4f}; top-1 agreement {a['top1_agreement']:.1%}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"threads": torch.get_num_threads(), "cpu": cpu_info(), "results": results},
                                        indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
