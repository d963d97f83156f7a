"""Masking's cost: an error of typical length and an 8 KB traceback, µs a call, and the time on adversarial
texts of 100 and 200 KB (linear: the second about twice the first)."""

import time

from common import REPO, emit

from failured.secrets import mask

TYPICAL = ("ConnectionError: HTTPSConnectionPool(host='api.example.com', port=443): Max retries exceeded with url: "
           "/v1/orders?id=123&api_key=sk_live_51HxQ2 (Caused by NewConnectionError('<urllib3.connection."
           "HTTPSConnection object at 0x7f>: Failed to establish a new connection: [Errno 111] Connection refused'))")
ADVERSARIAL = {"option prefixes": "--", "credential names": "-password", "names with no value": "x-api-key: ",
               "a distinct credential every 14 characters": None}


def adversarial(name, unit, size):
    if unit is None:  # each one masked where it stands; only the first ones also wherever else they appear
        return " ".join(f"key=v{i:07d}x" for i in range(size // 14))
    return unit * (size // len(unit))


def per_call_us(text, calls):
    start = time.perf_counter()
    for _ in range(calls):
        mask(text, ("a-known-secret-value",))
    return round((time.perf_counter() - start) / calls * 1e6, 1)


def seconds(text):
    start = time.perf_counter()
    mask(text, ())
    return round(time.perf_counter() - start, 3)


def main():
    traceback = (REPO / "failured" / "classify.py").read_text()[:8000]
    figures = {"typical error, µs": per_call_us(TYPICAL, 5000), "8 KB text, µs": per_call_us(traceback, 200)}
    for name, unit in ADVERSARIAL.items():
        figures[f"{name}, 100 KB / 200 KB, s"] = (f"{seconds(adversarial(name, unit, 100_000))} / "
                                                 f"{seconds(adversarial(name, unit, 200_000))}")
    emit("mask", figures, "linear; well under the classification of the same text")


if __name__ == "__main__":
    main()
