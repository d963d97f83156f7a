"""Messages classified per second by the shipped ruleset vs. the seed's FailureAnalyzer loop.

The baseline is what the seed does: for each category, for each pattern,
Python ``re.search`` — first hit wins.
"""

import random
import re
import time

from common import REPO, emit

from failured import corpus
from failured.config import load_config

COUNT = 100_000


def corpus_messages():
    return [message for _, _, _, message in corpus.read_corpus()]


def realistic_mix(rng):
    """Real messages with their numbers varied, plus long tracebacks and plain noise."""
    real = corpus_messages() or ["connection timeout", "malformed json", "订单不存在"]
    noise = ["job finished with status {n}", "worker {n} restarted", "unexpected state {n} in step {m}",
             "用户 {n} 的请求处理异常", "exit status {n}"]
    traceback = ("Traceback (most recent call last):\n" + "  File \"/srv/app/worker.py\", line {n}, in run\n" * 30
                 + "{msg}")
    out = []
    for i in range(COUNT):
        roll = rng.random()
        if roll < 0.70:
            message = rng.choice(real)
        elif roll < 0.85:
            message = rng.choice(noise)
        else:
            message = traceback.replace("{msg}", rng.choice(real))
        out.append(message.replace("{n}", str(rng.randint(1, 99999))).replace("{m}", str(rng.randint(1, 9))))
    return out


def baseline(snapshot):
    compiled = []
    for category in snapshot.ruleset.categories:
        patterns = []
        for pattern in category.patterns:
            try:
                re.compile(pattern.text, re.IGNORECASE)
                patterns.append(pattern.text)
            except re.error:
                pass  # RE2-only syntax: the seed could not have it either
        compiled.append((category.name, patterns))

    def analyze(message):
        for name, patterns in compiled:
            for pattern in patterns:
                if re.search(pattern, message, re.IGNORECASE):
                    return name
        return "unknown"

    return analyze


def rate(function, messages):
    start = time.perf_counter()
    for message in messages:
        function(message)
    return len(messages) / (time.perf_counter() - start)


def main():
    snapshot = load_config(REPO / "config")
    messages = realistic_mix(random.Random(42))
    patterns = sum(len(c.patterns) for c in snapshot.ruleset.categories)
    print(f"classify: {len(messages):,} messages, {patterns} patterns in {len(snapshot.ruleset.categories)} categories")
    ours = rate(snapshot.classifier.classify_uncached, messages)  # the matching itself, not the cache
    seed = rate(baseline(snapshot), messages)
    emit("classify", {"failured msgs/s": round(ours), "seed re loop msgs/s": round(seed),
                      "ratio": round(ours / seed, 1)}, ">= 10x the seed loop")


if __name__ == "__main__":
    main()
