"""Remake acrostic-cal.tsv: for each real 春联 of h-compose.tsv, the shipped default's first 嵌字 couplet on its two
first characters (its length, position 1, seed 1), with the model's calibration applied to both lines (`cal`) and
without it (`nocal`, acrostic as shipped). acrostic takes no calibration, so this wraps decode.generate to pass the
bias: an experiment, not an API. Run from the repository root:
python benchmarks/judged/acrostic_cal_lines.py > benchmarks/judged/acrostic-cal.tsv"""

import csv
from pathlib import Path

import duilian
from duilian import api, decode

HERE = Path(__file__).resolve().parent


def main() -> None:
    c = duilian.load()
    generate, bias = decode.generate, {"now": None}

    def with_bias(net, vocab, specs, search):
        return generate(net, vocab, specs, search, bias=bias["now"])

    decode.generate = with_bias  # acrostic calls decode.generate for the 上联 and then the 下联
    calibrated = c.calibration_bias(api.Options())
    print("upper\tcal\tnocal")
    for row in csv.DictReader(open(HERE / "h-compose.tsv", encoding="utf-8"), delimiter="\t"):
        upper, lower = row["human"].split("／")
        got = {}
        for name, b in (("cal", calibrated), ("nocal", None)):
            bias["now"] = b
            try:
                best = c.acrostic(upper[0] + lower[0], length=len(upper), n=5, seed=1)
            except ValueError:  # a head that cannot stand there: no couplet either way
                best = []
            got[name] = f"{best[0].upper}／{best[0].lower}" if best else ""
        if got["cal"] and got["nocal"]:
            print(f"{upper[0]}、{lower[0]}\t{got['cal']}\t{got['nocal']}")


if __name__ == "__main__":
    main()
